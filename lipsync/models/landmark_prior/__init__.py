"""Landmark prior: the talking-face generator of "Talking Face Generation with Lip and Identity Priors"
(Wu et al.), built on IP_LAP's audio-to-landmark transformer.

Only the networks, losses and landmark sketches exist so far; the family is not registered with
`lipsync.models.families`. The facts, the choices where the paper is silent, and what is left are in
README.md here.
"""

FAMILY = "landmark-prior"

__all__ = ["FAMILY"]
