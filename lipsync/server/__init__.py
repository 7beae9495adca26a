"""Network server for real-time avatars (see issue 3)."""
