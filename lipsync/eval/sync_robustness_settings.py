"""The settings of the sync-robustness analysis (`lipsync.eval.sync_robustness`): its transforms, their
default ranges (in this one place), the other defaults, and the parsing of range flags. No torch here: the
command line reads the defaults for its help.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

from lipsync.errors import InputError

Transform = Literal["shift", "scale", "rotation", "translation_x", "translation_y"]
TRANSFORMS: tuple[Transform, ...] = ("shift", "scale", "rotation", "translation_x", "translation_y")
GEOMETRIC: tuple[Transform, ...] = TRANSFORMS[1:]

# --- the default ranges: the paper's Fig. 6 axes ---------------------------------------------------------
DEFAULT_SHIFTS: tuple[float, ...] = tuple(float(k) for k in range(-15, 16))  # frames
DEFAULT_SCALES: tuple[float, ...] = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2)
DEFAULT_ANGLES: tuple[float, ...] = (-15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0)  # degrees
DEFAULT_TRANSLATIONS: tuple[float, ...] = (-10.0, -5.0, 0.0, 5.0, 10.0)  # percent of the crop side

DEFAULT_CLIPS = 20  # clips evaluated (spread over the speakers), at most
DEFAULT_WINDOWS_PER_CLIP = 8
DEFAULT_BATCH = 16  # windows per network pass
DEFAULT_VAL_FRACTION = 0.05  # the project's training configs hold out this fraction of clips

IDENTITY: dict[Transform, float] = {
    "shift": 0.0,
    "scale": 1.0,
    "rotation": 0.0,
    "translation_x": 0.0,
    "translation_y": 0.0,
}
AXIS_LABELS: dict[Transform, str] = {
    "shift": "audio shift (frames; + = audio from later)",
    "scale": "face scale (× crop)",
    "rotation": "rotation (degrees, + = counter-clockwise)",
    "translation_x": "horizontal translation (% of the crop, + = right)",
    "translation_y": "vertical translation (% of the crop, + = down)",
}


@dataclass(frozen=True)
class Ranges:
    """The values each transform is measured at (the identity value is always added)."""

    shifts: tuple[float, ...] = DEFAULT_SHIFTS
    scales: tuple[float, ...] = DEFAULT_SCALES
    angles: tuple[float, ...] = DEFAULT_ANGLES
    translations: tuple[float, ...] = DEFAULT_TRANSLATIONS  # both translation_x and translation_y

    def values(self, transform: Transform) -> tuple[float, ...]:
        given = {
            "shift": self.shifts,
            "scale": self.scales,
            "rotation": self.angles,
            "translation_x": self.translations,
            "translation_y": self.translations,
        }[transform]
        return tuple(sorted({*given, IDENTITY[transform]}))

    def validate(self) -> None:
        if any(k != round(k) for k in self.shifts):
            raise InputError(f"audio shifts must be whole frames, got {self.shifts}", "e.g. --shifts=-15..15")
        if any(s <= 0 for s in self.scales):
            raise InputError(f"scales must be positive, got {self.scales}", "e.g. --scales 0.8..1.2:0.05")


def parse_values(text: str) -> tuple[float, ...]:
    """ "A..B" (step 1), "A..B:STEP" or "a,b,c" → the values, sorted; InputError when malformed."""
    fix = "write a range A..B, A..B:STEP or a list a,b,c (e.g. --shifts=-15..15, --scales 0.8..1.2:0.1)"
    try:
        if ".." in text:
            span, _, step_text = text.partition(":")
            low_text, high_text = span.split("..")
            low, high = float(low_text), float(high_text)
            step = float(step_text) if step_text else 1.0
            if step <= 0 or high < low:
                raise ValueError("the step must be positive and the range increasing")
            count = math.floor((high - low) / step + 1e-9) + 1
            values = [round(low + i * step, 9) for i in range(count)]
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InputError(f"cannot read the values {text!r}: {exc}", fix) from exc
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"no usable values in {text!r}", fix)
    return tuple(sorted(set(values)))


def describe_values(values: tuple[float, ...]) -> str:
    """A range flag's text for `values`: A..B (step 1) or A..B:STEP when evenly spaced, else a list."""
    steps = {round(b - a, 9) for a, b in itertools.pairwise(values)}
    if len(values) > 2 and len(steps) == 1:
        step = steps.pop()
        return f"{values[0]:g}..{values[-1]:g}" + ("" if step == 1 else f":{step:g}")
    return ",".join(f"{v:g}" for v in values)
