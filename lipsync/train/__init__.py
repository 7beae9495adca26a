"""Training (see issue 4)."""
