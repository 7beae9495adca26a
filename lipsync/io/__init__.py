"""Audio and video input/output: streaming decode, encode and muxing with PyAV."""
