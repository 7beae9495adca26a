"""The landmark-prior weights folder: its layout, a cheap check of every file, and untrained scaffolds.

    ROOT/
      lipsync.json                         which families the folder holds (written by scaffold)
      landmark-prior/
        config.json                        face size, widths, T, how many references of each kind
        landmark_transformer.safetensors   the audio-to-landmark transformer (IP_LAP's)
        alignment.safetensors              M_a, the alignment model
        renderer.safetensors               M_r, the rendering model

No weights of this family are published and there is no trainer yet: `lipsync weights scaffold DIR --model
landmark-prior [--tiny] [--face-size 256]` writes random ones (for tests only).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from lipsync.errors import WeightsError
from lipsync.models.landmark_prior.alignment import AlignmentModel
from lipsync.models.landmark_prior.config import FACE_SIZE, FACE_SIZES, RenderConfig
from lipsync.models.landmark_prior.landmark_transformer import (
    REFERENCE_SETS,
    SEQUENCE_FRAMES,
    LandmarkTransformer,
    TransformerConfig,
)
from lipsync.models.landmark_prior.renderer import LIP_REFERENCES, RenderingModel
from lipsync.models.scaffold import Noise, write_random_safetensors
from lipsync.models.weights import (
    MAX_CONFIG_COUNT,
    MAX_CONFIG_DEPTH,
    MAX_CONFIG_WIDTH,
    ModelEntry,
    WeightsReport,
    check_family_config,
    check_weights_file,
    config_size,
    is_untrained,
    read_family_config,
    read_weights_manifest,
    refuse_to_overwrite_trained,
    write_model_entry,
)

FAMILY = "landmark-prior"
VERSIONS: tuple[str, ...] = ("v1",)  # the layout's version; the face size is in config.json
DEFAULT_VERSION = "v1"
FAMILY_DIR = "landmark-prior"
CONFIG_FILE = "config.json"
TRANSFORMER_FILE = "landmark_transformer.safetensors"
ALIGNMENT_FILE = "alignment.safetensors"
RENDERER_FILE = "renderer.safetensors"
CONFIG_FORMAT = "lipsync-landmark-prior"
# Image references M_a warps: the paper's choice after its ablation (§4.6, Table 2: 25 is best and more
# only costs time); §4.1 says a fifth of the video, which 25 is for a 5 s clip at 25 fps.
IMAGE_REFERENCES = 25
EXPECTED_TREE = f"""\
  ROOT/
    {FAMILY_DIR}/   {CONFIG_FILE}, {TRANSFORMER_FILE}, {ALIGNMENT_FILE}, {RENDERER_FILE}"""
SOURCES = {
    FAMILY_DIR: "no released files and no trainer yet: write untrained ones for tests "
    "(lipsync weights scaffold DIR --model landmark-prior)"
}
SCAFFOLD_HINT = (
    "`lipsync weights scaffold DIR --model landmark-prior [--tiny] [--face-size 256]` writes untrained "
    "random weights in this layout (for tests only)"
)


@dataclass(frozen=True)
class FamilyConfig:
    """What config.json says: the networks' widths and how many references of each kind are read."""

    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    sequence_frames: int = SEQUENCE_FRAMES  # T, the transformer's window (IP_LAP)
    references: int = IMAGE_REFERENCES  # N, the reference images M_a warps
    lip_references: int = LIP_REFERENCES  # the lip references of M_r's multi-reference lip module
    landmark_references: int = REFERENCE_SETS  # N_l, the transformer's reference landmark sets

    @property
    def face_size(self) -> int:
        return self.render.face_size

    @property
    def reference_frames(self) -> int:
        """Frames picked per video: the three kinds are prefixes of one spread-out order."""
        return max(self.references, self.lip_references, self.landmark_references)

    def to_json(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FamilyConfig:
        transformer = TransformerConfig(**_settings(TransformerConfig, data["transformer"], "transformer"))
        render = RenderConfig(**_settings(RenderConfig, data["render"], "render"))
        if render.face_size not in FACE_SIZES:
            raise ValueError(f"face size {render.face_size} is not one of {', '.join(map(str, FACE_SIZES))}")
        _check_sizes(transformer, render)
        counts = {name: data.get(name, getattr(cls, name)) for name in _COUNTS}
        for name, value in counts.items():
            config_size(name, value, MAX_CONFIG_COUNT)
        if counts["sequence_frames"] != SEQUENCE_FRAMES:
            frames = counts["sequence_frames"]
            raise ValueError(f"sequence_frames is {frames}: only T = {SEQUENCE_FRAMES} is built")
        return cls(transformer, render, **counts)


_COUNTS = ("sequence_frames", "references", "lip_references", "landmark_references")


# Each size setting of the two network configs and its bound (weights.MAX_CONFIG_*).
_TRANSFORMER_SIZES = {
    "model_dim": MAX_CONFIG_WIDTH,
    "feedforward_dim": MAX_CONFIG_WIDTH,
    "width_divisor": MAX_CONFIG_WIDTH,
    "layers": MAX_CONFIG_DEPTH,
    "heads": MAX_CONFIG_DEPTH,
}
_RENDER_SIZES = {
    "full_channels": MAX_CONFIG_WIDTH,
    "half_channels": MAX_CONFIG_WIDTH,
    "spade_hidden": MAX_CONFIG_WIDTH,
    "weight_hidden": MAX_CONFIG_WIDTH,
    "attention_channels": MAX_CONFIG_WIDTH,
    "audio_width_divisor": MAX_CONFIG_WIDTH,
    "fusion_blocks": MAX_CONFIG_DEPTH,
}


def _check_sizes(transformer: TransformerConfig, render: RenderConfig) -> None:
    """A ValueError for a size out of its bounds, before a network of these configs is built."""
    for what, config, bounds in (
        ("transformer", transformer, _TRANSFORMER_SIZES),
        ("render", render, _RENDER_SIZES),
    ):
        for name, largest in bounds.items():
            config_size(f"{what}.{name}", getattr(config, name), largest)
    if transformer.model_dim % transformer.heads:
        raise ValueError(
            f"transformer.model_dim {transformer.model_dim} is not divisible by its {transformer.heads} heads"
        )
    if not isinstance(transformer.dropout, (int, float)) or not 0 <= transformer.dropout < 1:
        raise ValueError(f"transformer.dropout is {transformer.dropout!r}: give a number from 0 to below 1")


def _settings(kind: type, values: Any, what: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ValueError(f"{what} is not a JSON object")
    unknown = sorted(set(values) - {f.name for f in fields(kind)})
    if unknown:
        raise ValueError(f"unknown {what} settings: {', '.join(unknown)}")
    return values


@dataclass(frozen=True)
class WeightsLayout:
    root: Path

    @property
    def folder(self) -> Path:
        return self.root / FAMILY_DIR

    @property
    def config(self) -> Path:
        return self.folder / CONFIG_FILE

    @property
    def transformer(self) -> Path:
        return self.folder / TRANSFORMER_FILE

    @property
    def alignment(self) -> Path:
        return self.folder / ALIGNMENT_FILE

    @property
    def renderer(self) -> Path:
        return self.folder / RENDERER_FILE

    @property
    def networks(self) -> tuple[Path, ...]:
        return (self.transformer, self.alignment, self.renderer)


def read_config(root: Path) -> FamilyConfig:
    """config.json of the family in ROOT, or WeightsError saying what is wrong and how to fix it."""
    path = WeightsLayout(Path(root)).config
    return read_family_config(path, FAMILY, CONFIG_FORMAT, SCAFFOLD_HINT, FamilyConfig.from_json)


def check_weights(root: Path, version: str | None = None) -> WeightsReport:
    """Every file of the layout: present, missing or malformed (no full loads)."""
    root = Path(root)
    layout = WeightsLayout(root)
    config = check_family_config(layout.config, lambda: read_config(root))
    checks = (config, *(check_weights_file(path) for path in layout.networks))
    untrained = is_untrained(root, FAMILY)
    title = "landmark prior"
    return WeightsReport(root, FAMILY, title, checks, untrained, SOURCES, EXPECTED_TREE, SCAFFOLD_HINT)


def recognise(root: Path) -> bool:
    """True when ROOT has this family's folder with its config."""
    return WeightsLayout(Path(root)).config.is_file()


def scaffold_weights(root: Path, tiny: bool = False, seed: int = 0, face_size: int = FACE_SIZE) -> None:
    """Write random weights in the layout, marked untrained: full width (the paper's and IP_LAP's) or a
    `tiny` configuration for tests, at 128 or 256 px. Refuses to write over weights not marked untrained."""
    if face_size not in FACE_SIZES:
        raise WeightsError(
            f"{FAMILY} has no {face_size} px configuration",
            f"set `face_size` to one of {', '.join(map(str, FACE_SIZES))}",
        )
    root = Path(root)
    layout = WeightsLayout(root)
    refuse_to_overwrite_trained(root, FAMILY, layout.networks, FAMILY)
    config = FamilyConfig(
        TransformerConfig.tiny() if tiny else TransformerConfig(),
        RenderConfig.tiny(face_size) if tiny else RenderConfig.for_size(face_size),
    )
    layout.folder.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(json.dumps(config.to_json(), indent=2) + "\n", encoding="utf-8")
    noise = Noise(seed)
    with torch.device("meta"):
        networks: dict[Path, torch.nn.Module] = {
            layout.transformer: LandmarkTransformer(config.transformer),
            layout.alignment: AlignmentModel(config.render),
            layout.renderer: RenderingModel(config.render),
        }
    write_random_safetensors(networks, noise)
    write_model_entry(root, ModelEntry(FAMILY, DEFAULT_VERSION, "tiny" if tiny else "full", untrained=True))


UNTRAINED_PARTS = "untrained_parts"  # lipsync.json training info: the networks a folder holds untrained
TRANSFORMER_PART, ALIGNMENT_PART, RENDERER_PART = "transformer", "alignment", "renderer"
PARTS = (TRANSFORMER_PART, ALIGNMENT_PART, RENDERER_PART)


def untrained_parts(root: Path) -> list[str]:
    """Which networks ROOT's folder holds untrained: its lipsync.json's `untrained_parts` (the trainers'
    exports list them, since each trains only some), else all of them for a folder marked untrained (a
    scaffold, or one whose lipsync.json does not list the family) and none otherwise."""
    entry = read_weights_manifest(Path(root)).get(FAMILY)
    if entry is None:
        return list(PARTS) if is_untrained(Path(root), FAMILY) else []
    listed = entry.training.get(UNTRAINED_PARTS)
    if isinstance(listed, list):
        return [part for part in PARTS if part in listed]
    return list(PARTS) if entry.untrained else []
