"""Offline and streaming inference pipelines."""
