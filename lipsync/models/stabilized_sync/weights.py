"""The stabilized-sync weights folder: its layout, a cheap check of every file, and untrained scaffolds.

    ROOT/
      lipsync.json                   which families the folder holds (written by scaffold and export)
      stabilized-sync/
        config.json                  face size, generator widths, whether G_S closes the references
        generator.safetensors        G_L, the talking-face generator
        silent_generator.safetensors G_S, the silent-lip generator (same architecture)
        audio_encoder.safetensors    the frozen AVSyncNet audio encoder (ResNetSE-34) that gives F_A; with
                                     `audio_encoder: wav2vec2` in config.json (ablation setup C), the
                                     wav2vec2 model and its projection to F_A (`wav2vec2.py`)

No weights of this family are published: they come from `lipsync train stabilized`, which exports this
layout, or from `lipsync weights scaffold DIR --model stabilized-sync` (random, for tests).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from lipsync.models.scaffold import Noise, write_random_safetensors
from lipsync.models.stabilized_sync.generator_net import (
    PAPER_FACE_SIZE,
    GeneratorConfig,
    TalkingFaceGenerator,
)
from lipsync.models.stabilized_sync.resnet_se34 import ResNetSE34
from lipsync.models.weights import (
    MAX_CONFIG_DEPTH,
    MAX_CONFIG_FACE_SIZE,
    MAX_CONFIG_WIDTH,
    ModelEntry,
    WeightsReport,
    check_family_config,
    check_weights_file,
    config_size,
    is_untrained,
    read_family_config,
    refuse_to_overwrite_trained,
    write_model_entry,
)

FAMILY = "stabilized-sync"
VERSIONS: tuple[str, ...] = ("v1",)  # the layout's version; the face size is in config.json
DEFAULT_VERSION = "v1"
FAMILY_DIR = "stabilized-sync"
CONFIG_FILE = "config.json"
GENERATOR_FILE = "generator.safetensors"
SILENT_GENERATOR_FILE = "silent_generator.safetensors"
AUDIO_ENCODER_FILE = "audio_encoder.safetensors"
CONFIG_FORMAT = "lipsync-stabilized-sync"
# F_A's encoder: AVSyncNet's ResNetSE-34 on mel windows (the paper's model), or wav2vec 2.0 on waveform
# windows (ablation setup C, wav2vec2.py; audio_encoder.safetensors then holds wav2vec2 and its projection)
AUDIO_ENCODERS = ("avsyncnet", "wav2vec2")
EXPECTED_TREE = f"""\
  ROOT/
    {FAMILY_DIR}/   {CONFIG_FILE}, {GENERATOR_FILE}, {SILENT_GENERATOR_FILE}, {AUDIO_ENCODER_FILE}"""
SOURCES = {
    FAMILY_DIR: "no released files: train them (lipsync train stabilized, which exports this folder), or "
    "write untrained ones for tests (lipsync weights scaffold DIR --model stabilized-sync)"
}
SCAFFOLD_HINT = (
    "`lipsync train stabilized --config ...` exports this layout; `lipsync weights scaffold DIR --model "
    "stabilized-sync [--tiny]` writes untrained random weights in it (for tests only)"
)


@dataclass(frozen=True)
class FamilyConfig:
    """What config.json says: the generator's configuration and how references are made."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    silent_lip_references: bool = True  # G_S closes the lips of each identity reference (paper §3.2)
    audio_encoder: str = "avsyncnet"  # F_A's encoder: one of AUDIO_ENCODERS
    wav2vec2: dict[str, Any] | None = None  # audio_encoder wav2vec2: its Hugging Face config
    wav2vec2_normalize: bool = True  # audio_encoder wav2vec2: zero mean, unit variance per window

    def to_json(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FamilyConfig:
        generator = dict(data["generator"])
        for name in ("encoder_channels", "decoder_channels"):
            generator[name] = tuple(generator[name])
        known = {f.name for f in fields(GeneratorConfig)}
        unknown = sorted(set(generator) - known)
        if unknown:
            raise ValueError(f"unknown generator settings: {', '.join(unknown)}")
        config = GeneratorConfig(**generator)
        _check_sizes(config)
        config.validate()
        audio_encoder = data.get("audio_encoder", "avsyncnet")
        if audio_encoder not in AUDIO_ENCODERS:
            raise ValueError(f"audio_encoder is {audio_encoder!r}, not one of {', '.join(AUDIO_ENCODERS)}")
        wav2vec2 = data.get("wav2vec2")
        if audio_encoder == "wav2vec2" and not isinstance(wav2vec2, dict):
            raise ValueError("audio_encoder is wav2vec2 but there is no wav2vec2 config")
        return cls(
            config,
            bool(data.get("silent_lip_references", True)),
            audio_encoder,
            wav2vec2 if audio_encoder == "wav2vec2" else None,
            bool(data.get("wav2vec2_normalize", True)),
        )


def _check_sizes(config: GeneratorConfig) -> None:
    """A ValueError for a size out of its bounds (weights.MAX_CONFIG_*), before a network is built."""
    config_size("generator.face_size", config.face_size, MAX_CONFIG_FACE_SIZE)
    for name in ("encoder_channels", "decoder_channels"):
        widths = getattr(config, name)
        config_size(f"the number of generator.{name}", len(widths), MAX_CONFIG_DEPTH)
        for index, width in enumerate(widths):
            config_size(f"generator.{name}[{index}]", width, MAX_CONFIG_WIDTH)
    for name in ("stem_channels", "bottleneck_channels", "head_channels", "audio_dim"):
        config_size(f"generator.{name}", getattr(config, name), MAX_CONFIG_WIDTH)


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
    def generator(self) -> Path:
        return self.folder / GENERATOR_FILE

    @property
    def silent_generator(self) -> Path:
        return self.folder / SILENT_GENERATOR_FILE

    @property
    def audio_encoder(self) -> Path:
        return self.folder / AUDIO_ENCODER_FILE


def read_config(root: Path) -> FamilyConfig:
    """config.json of the family in ROOT, or WeightsError saying what is wrong and how to fix it."""
    path = WeightsLayout(Path(root)).config
    return read_family_config(path, FAMILY, CONFIG_FORMAT, SCAFFOLD_HINT, FamilyConfig.from_json)


def check_weights(root: Path, version: str | None = None) -> WeightsReport:
    """Every file of the layout: present, missing or malformed (no full loads)."""
    root = Path(root)
    layout = WeightsLayout(root)
    config = check_family_config(layout.config, lambda: read_config(root))
    files = [layout.generator, layout.audio_encoder, layout.silent_generator]
    checks = (config, *(check_weights_file(path) for path in files))
    return WeightsReport(
        root,
        FAMILY,
        "stabilized sync",
        checks,
        is_untrained(root, FAMILY),
        SOURCES,
        EXPECTED_TREE,
        SCAFFOLD_HINT,
    )


def recognise(root: Path) -> bool:
    """True when ROOT has this family's folder with its config."""
    return WeightsLayout(Path(root)).config.is_file()


def scaffold_weights(root: Path, tiny: bool = False, seed: int = 0, face_size: int = PAPER_FACE_SIZE) -> None:
    """Write random weights in the layout, marked untrained: the paper's 96 px configuration at full width,
    or a `tiny` one for tests. Refuses to write over weights that are not marked untrained."""
    root = Path(root)
    layout = WeightsLayout(root)
    files = (layout.generator, layout.silent_generator, layout.audio_encoder)
    refuse_to_overwrite_trained(root, FAMILY, files, FAMILY)
    config = FamilyConfig(GeneratorConfig.tiny(face_size) if tiny else GeneratorConfig.for_size(face_size))
    layout.folder.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(json.dumps(config.to_json(), indent=2) + "\n", encoding="utf-8")
    noise = Noise(seed)
    with torch.device("meta"):
        networks = {
            layout.generator: TalkingFaceGenerator(config.generator),
            layout.silent_generator: TalkingFaceGenerator(config.generator),
            layout.audio_encoder: ResNetSE34(out_dim=config.generator.audio_dim),
        }
    write_random_safetensors(networks, noise)
    write_model_entry(root, ModelEntry(FAMILY, DEFAULT_VERSION, "tiny" if tiny else "full", untrained=True))
