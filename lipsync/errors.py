"""Errors a user can act on.

Every error raised for bad input carries two parts: what is wrong, and how to fix it.
The CLI prints both and exits non-zero; library users catch `LipsyncError`.
"""

from __future__ import annotations


class LipsyncError(Exception):
    """Base class: a problem the user can fix, with a hint saying how."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}\n  fix: {self.fix}" if self.fix else self.problem


class InputError(LipsyncError):
    """A video, image or audio input that cannot be used (missing, unreadable, empty)."""


class NoFaceError(LipsyncError):
    """No face was found in any frame of the input."""


class WeightsError(LipsyncError):
    """Model weights that are missing, partial or malformed."""


class OutputError(LipsyncError):
    """An output path that cannot be written."""


class LoadBenchError(LipsyncError):
    """`lipsync bench-live` could not run (no server, no avatar, bad options)."""
