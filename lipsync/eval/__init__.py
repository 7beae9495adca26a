"""Evaluation metrics (see issue 5)."""
