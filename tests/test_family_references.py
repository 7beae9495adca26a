"""What each family draws, recorded once and compared within rounding: a refactor that moves a family's
code cannot change its frames unnoticed.

Per family: tiny scaffolded weights (seed 0), fp32 on the CPU, the first DUB_FRAMES frames of talk_c.mp4
dubbed with speech_44k_stereo.wav; a few frames stored, cropped to every pixel the family changes. The
comparison (tests/reference_frames.py) allows what other CPUs and thread counts round differently, and a
moved weight still fails it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.config import DubSettings, RuntimeSettings
from lipsync.io.video import FrameReader, probe_video
from lipsync.models import families
from lipsync.models.families import load_generator
from lipsync.models.generator import Generator
from lipsync.pipeline.dub import DubPipeline

from conftest import media
from reference_frames import load_reference, save_reference

FAMILIES = ("stabilized-sync", "landmark-prior")
DUB_FRAMES = 24
STORED_FRAMES = (0, 11, 23)
FP32 = DubSettings(runtime=RuntimeSettings(device="cpu", dtype="fp32", batch_size=8))


def reference_file(family: str) -> Path:
    return Path(__file__).parent / "data" / f"{family}-dub.npz"


def dubbed_frames(generator: Generator) -> list[np.ndarray]:
    pipeline = DubPipeline(generator, FP32)
    frames = pipeline.frames(media("talk_c.mp4"), media("speech_44k_stereo.wav"), max_frames=DUB_FRAMES)
    return [frame.image for frame in frames]


def fresh_generator(weights: Path) -> Generator:
    """A generator with nothing cached (the families cache reference encodings by content, not weights)."""
    return load_generator(weights, device="cpu", dtype="fp32")


def drawing_network(generator: Generator) -> torch.nn.Module:
    """The network that draws the face: stabilized sync's G_L, the landmark prior's renderer."""
    models = generator.models  # type: ignore[attr-defined]
    return models.renderer if generator.info.family == "landmark-prior" else models.generator


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_draws_the_frames_it_drew_when_recorded(
    family: str, family_scaffolds: dict[str, Path]
) -> None:
    reference = load_reference(reference_file(family))
    assert reference.mismatch("dub", dubbed_frames(fresh_generator(family_scaffolds[family]))) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_a_moved_weight_fails_the_comparison(family: str, family_scaffolds: dict[str, Path]) -> None:
    generator = fresh_generator(family_scaffolds[family])
    *_, last = drawing_network(generator).parameters()  # of the layer that gives the pixels
    with torch.no_grad():
        last[(0,) * last.dim()] += 0.05  # one number
    problem = load_reference(reference_file(family)).mismatch("dub", dubbed_frames(generator))
    assert problem is not None and problem.startswith("dub: frames [0, 11, 23] differ from the reference")


def record_reference(family: str, folder: Path) -> None:
    """Write the family's reference anew: only when its frames are meant to change.
    `python tests/test_family_references.py FAMILY` runs it."""
    families.family(family).scaffold(folder, tiny=True)
    frames = dubbed_frames(fresh_generator(folder))
    with FrameReader(probe_video(media("talk_c.mp4"))) as reader:
        source = list(reader.frames(0, DUB_FRAMES))
    changed = np.zeros(frames[0].shape[:2], dtype=bool)
    for drawn, original in zip(frames, source, strict=True):
        changed |= (drawn != original).any(axis=2)
    rows, columns = np.nonzero(changed)
    box = (int(rows.min()), int(rows.max()) + 1, int(columns.min()), int(columns.max()) + 1)
    save_reference(reference_file(family), box, {"dub": (STORED_FRAMES, frames)})


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or FAMILIES:
        with tempfile.TemporaryDirectory() as scratch:
            record_reference(name, Path(scratch) / name)
        print(f"wrote {reference_file(name)}")
