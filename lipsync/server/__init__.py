"""Network server for real-time avatars (protocol: docs/streaming-protocol.md)."""
