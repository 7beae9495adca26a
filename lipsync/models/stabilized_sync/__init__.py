"""Stabilized sync: the talking-face generator of "Audio-driven Talking Face Generation with Stabilized
Synchronization Loss" (Yaman et al.), with its AVSyncNet expert, silent-lip generator and losses.

Networks, losses and mel features only so far; no `Generator` yet, so the family is not registered in
`lipsync.models.families`. The facts it implements, and what is left, are in README.md here.
"""

from __future__ import annotations

FAMILY = "stabilized-sync"

__all__ = ["FAMILY"]
