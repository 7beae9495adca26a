"""Training data: `lipsync data prepare` and the on-disk format it writes."""
