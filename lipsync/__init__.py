"""lipsync: real-time, high-fidelity lip synchronisation (visual dubbing)."""

__version__ = "0.1.0"
