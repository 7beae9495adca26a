"""The weights folder: its layout, a cheap check of every file, and untrained scaffolds for tests.

The layout is MuseTalk's own `models/` folder, so a user can point us at an existing download.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from lipsync.config import (
    AUDIO_SAMPLE_RATE,
    IMAGE_CHANNELS,
    LATENT_CHANNELS,
    UNET_IN_CHANNELS,
    WHISPER_ENCODER_LAYERS,
    WHISPER_HIDDEN_SIZE,
    WHISPER_MEL_BINS,
    ModelVersion,
)
from lipsync.errors import WeightsError

UNTRAINED_MARKER = "UNTRAINED.json"
TRAINING_INFO_FILE = "lipsync-training.json"  # next to a UNet exported by `lipsync train unet`
CONFIG_FILE = "config.json"
UNET_CONFIG_FILE = "musetalk.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
UNET_DIRS: dict[str, str] = {"v1": "musetalk", "v15": "musetalkV15"}
UNET_WEIGHT_FILES: dict[str, str] = {"v1": "pytorch_model.bin", "v15": "unet.pth"}
VAE_DIR = "sd-vae"
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors")
WHISPER_DIR = "whisper"
WHISPER_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
ALL_VERSIONS: tuple[ModelVersion, ...] = get_args(ModelVersion)
VERSION_LABELS: dict[str, str] = {"v1": "v1.0", "v15": "v1.5"}

SOURCES = {
    UNET_DIRS["v1"]: "https://huggingface.co/TMElyralab/MuseTalk (folder musetalk/)",
    UNET_DIRS["v15"]: "https://huggingface.co/TMElyralab/MuseTalk (folder musetalkV15/)",
    VAE_DIR: "https://huggingface.co/stabilityai/sd-vae-ft-mse",
    WHISPER_DIR: "https://huggingface.co/openai/whisper-tiny",
}
EXPECTED_TREE = """\
  ROOT/
    musetalk/      musetalk.json, pytorch_model.bin           (v1.0 UNet)
    musetalkV15/   musetalk.json, unet.pth                    (v1.5 UNet)
    sd-vae/        config.json, diffusion_pytorch_model.bin   (or diffusion_pytorch_model.safetensors)
    whisper/       config.json, preprocessor_config.json, pytorch_model.bin   (or model.safetensors)"""
SCAFFOLD_HINT = (
    "`lipsync weights scaffold DIR` writes untrained random weights in this layout (for tests only)"
)

_SAFETENSORS_HEADER_BYTES = 8
_TORCH_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # first byte of a legacy (non-zip) torch.save file
_LFS_POINTER = b"version https://git-lfs"
# Full-size scaffolds slice noise from a pool: drawing 850 M normal samples takes ~10 s, twice as long.
_NOISE_POOL_SIZE = 1 << 24
_SMALL_TENSOR = 1 << 16


@dataclass(frozen=True)
class WeightsLayout:
    """Where each file of one model version lives under ROOT."""

    root: Path
    version: ModelVersion

    @property
    def unet_dir(self) -> Path:
        return self.root / UNET_DIRS[self.version]

    @property
    def unet_config(self) -> Path:
        return self.unet_dir / UNET_CONFIG_FILE

    @property
    def unet_weights(self) -> Path:
        return self.unet_dir / UNET_WEIGHT_FILES[self.version]

    @property
    def vae_dir(self) -> Path:
        return self.root / VAE_DIR

    @property
    def vae_config(self) -> Path:
        return self.vae_dir / CONFIG_FILE

    @property
    def vae_weights(self) -> Path:
        """The first of the accepted weight files that exists (the .bin when none does)."""
        return _first_existing(self.vae_dir, VAE_WEIGHT_FILES)

    @property
    def whisper_dir(self) -> Path:
        return self.root / WHISPER_DIR

    @property
    def whisper_config(self) -> Path:
        return self.whisper_dir / CONFIG_FILE

    @property
    def whisper_weights(self) -> Path:
        return _first_existing(self.whisper_dir, WHISPER_WEIGHT_FILES)

    @property
    def whisper_preprocessor(self) -> Path:
        return self.whisper_dir / PREPROCESSOR_FILE

    def required_files(self) -> list[Path]:
        return [
            self.unet_config,
            self.unet_weights,
            self.vae_config,
            self.vae_weights,
            self.whisper_config,
            self.whisper_weights,
            self.whisper_preprocessor,
        ]


def _first_existing(folder: Path, names: Sequence[str]) -> Path:
    return next((folder / n for n in names if (folder / n).exists()), folder / names[0])


@dataclass(frozen=True)
class FileCheck:
    path: Path
    status: Literal["present", "missing", "malformed"]
    detail: str


@dataclass(frozen=True)
class WeightsReport:
    root: Path
    versions: tuple[ModelVersion, ...]
    files: tuple[FileCheck, ...]
    untrained: bool

    @property
    def ok(self) -> bool:
        return all(f.status == "present" for f in self.files)

    def problems(self) -> list[FileCheck]:
        return [f for f in self.files if f.status != "present"]

    def format(self) -> str:
        names = ", ".join(VERSION_LABELS[v] for v in self.versions)
        lines = [f"weights in {self.root} (MuseTalk {names}):"]
        for f in self.files:
            rel = f.path.relative_to(self.root) if f.path.is_relative_to(self.root) else f.path
            lines.append(f"  {f.status:<9} {rel}" + (f"  ({f.detail})" if f.detail else ""))
        if self.untrained:
            lines.append(
                f"  NOTE: {UNTRAINED_MARKER} found: these are untrained test weights; output is noise"
            )
        bad_dirs = sorted({f.path.parent.name for f in self.problems()})
        if bad_dirs:
            lines.append("get the missing or malformed files from:")
            lines += [f"  {d}/: {SOURCES.get(d, '?')}" for d in bad_dirs]
            lines.append("expected layout (the same as MuseTalk's models/ folder):")
            lines.append(EXPECTED_TREE)
            lines.append(SCAFFOLD_HINT)
        return "\n".join(lines)


def is_untrained(root: Path) -> bool:
    return (Path(root) / UNTRAINED_MARKER).is_file()


# --- checks ---------------------------------------------------------------------------------------

# The config fields each file must have for our code (and the released weights) to fit.
UNET_CONFIG_EXPECTED: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "in_channels": UNET_IN_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "cross_attention_dim": WHISPER_HIDDEN_SIZE,
}
VAE_CONFIG_EXPECTED: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "in_channels": IMAGE_CHANNELS,
    "out_channels": IMAGE_CHANNELS,
    "latent_channels": LATENT_CHANNELS,
}
WHISPER_CONFIG_EXPECTED: dict[str, Any] = {
    "model_type": "whisper",
    "d_model": WHISPER_HIDDEN_SIZE,
    "encoder_layers": WHISPER_ENCODER_LAYERS,
    "num_mel_bins": WHISPER_MEL_BINS,
}
PREPROCESSOR_CONFIG_EXPECTED: dict[str, Any] = {
    "feature_size": WHISPER_MEL_BINS,
    "sampling_rate": AUDIO_SAMPLE_RATE,
}


def _config_mismatches(config: dict[str, Any], expected: dict[str, Any]) -> str:
    wrong = [
        f"{k}={config[k]!r} (expected {v!r})" if k in config else f"{k} absent (expected {v!r})"
        for k, v in expected.items()
        if config.get(k) != v
    ]
    return "; ".join(wrong)


def _check_json(path: Path, expected: dict[str, Any]) -> FileCheck:
    if not path.is_file():
        return FileCheck(path, "missing", "")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return FileCheck(path, "malformed", f"not valid JSON: {exc}")
    if not isinstance(config, dict):
        return FileCheck(path, "malformed", "not a JSON object")
    wrong = _config_mismatches(config, expected)
    return FileCheck(path, "malformed" if wrong else "present", wrong)


def _weights_problem(path: Path) -> str:
    """Why a weights file cannot be what it claims, from its header and directory only ('' if fine)."""
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    with path.open("rb") as fh:
        head = fh.read(len(_LFS_POINTER))
        if head.startswith(_LFS_POINTER):
            return "a Git LFS pointer, not the weights: fetch the real file (git lfs pull)"
        if path.suffix == ".safetensors":
            return _safetensors_problem(fh, size)
    if head.startswith(_TORCH_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "truncated or corrupt torch archive (zip directory unreadable)"
        return "" if any(n.endswith("data.pkl") for n in names) else "zip archive without torch data.pkl"
    if head[0] == _PICKLE_PROTO:
        return ""  # legacy torch.save format: nothing cheap left to check
    return "not a PyTorch or safetensors file"


def _safetensors_problem(fh: Any, size: int) -> str:
    fh.seek(0)
    header_len = int.from_bytes(fh.read(_SAFETENSORS_HEADER_BYTES), "little")
    if _SAFETENSORS_HEADER_BYTES + header_len > size:
        return "truncated safetensors file (header runs past the end)"
    try:
        header = json.loads(fh.read(header_len))
        data_end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        return "unreadable safetensors header"
    if _SAFETENSORS_HEADER_BYTES + header_len + data_end > size:
        return "truncated safetensors file (tensor data runs past the end)"
    return ""


def _check_weights_file(path: Path) -> FileCheck:
    if not path.is_file():
        return FileCheck(path, "missing", "")
    problem = _weights_problem(path)
    return FileCheck(path, "malformed" if problem else "present", problem)


def check_weights(root: Path, version: ModelVersion | None = None) -> WeightsReport:
    """Check every file one or both versions need: present, missing or malformed (no full loads)."""
    root = Path(root)
    versions = ALL_VERSIONS if version is None else (version,)
    layouts = [WeightsLayout(root, v) for v in versions]
    shared = layouts[0]
    checks = [_check_json(layout.unet_config, UNET_CONFIG_EXPECTED) for layout in layouts]
    checks += [_check_weights_file(layout.unet_weights) for layout in layouts]
    checks += [
        _check_json(shared.vae_config, VAE_CONFIG_EXPECTED),
        _check_weights_file(shared.vae_weights),
        _check_json(shared.whisper_config, WHISPER_CONFIG_EXPECTED),
        _check_weights_file(shared.whisper_weights),
        _check_json(shared.whisper_preprocessor, PREPROCESSOR_CONFIG_EXPECTED),
    ]
    return WeightsReport(root, versions, tuple(checks), is_untrained(root))


# --- scaffolding ----------------------------------------------------------------------------------


def _all_weight_paths(root: Path) -> list[Path]:
    paths = [root / UNET_DIRS[v] / UNET_WEIGHT_FILES[v] for v in ALL_VERSIONS]
    paths += [root / VAE_DIR / n for n in VAE_WEIGHT_FILES] + [
        root / WHISPER_DIR / n for n in WHISPER_WEIGHT_FILES
    ]
    return paths


class _Noise:
    """Normal noise: exact draws for small tensors, slices of a shared pool for big ones (speed)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(_NOISE_POOL_SIZE, generator=self.generator)

    def fill(self, out: torch.Tensor, std: float, mean: float) -> None:
        """Fill a flat tensor with normal noise of this std and mean."""
        numel = out.numel()
        if numel <= _SMALL_TENSOR:
            values = torch.randn(numel, generator=self.generator)
        elif numel > _NOISE_POOL_SIZE:
            values = self.pool.repeat(math.ceil(numel / _NOISE_POOL_SIZE))[:numel]
        else:
            offset = int(torch.randint(_NOISE_POOL_SIZE - numel + 1, (1,), generator=self.generator))
            values = self.pool[offset : offset + numel]
        torch.mul(values, std, out=out)
        if mean:
            out.add_(mean)


def _random_state_dict(module: nn.Module, noise: _Noise) -> dict[str, torch.Tensor]:
    """Random float32 tensors for every entry of module's state dict (which may live on the meta device)."""
    state: dict[str, torch.Tensor] = {}
    for name, ref in module.state_dict().items():
        if ref.dim() > 1:  # LeCun-scaled, so activations stay O(1) through the random network
            std, mean = 1.0 / math.sqrt(math.prod(ref.shape[1:])), 0.0
        else:  # norm scales near 1, biases near 0
            std, mean = 0.02, (1.0 if name.endswith("weight") else 0.0)
        state[name] = torch.empty(ref.shape)
        noise.fill(state[name].view(-1), std, mean)
    return state


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def scaffold_weights(
    root: Path, tiny: bool = False, versions: Sequence[ModelVersion] = ALL_VERSIONS, seed: int = 0
) -> None:
    """Write randomly initialised weights in the real layout, marked untrained. For tests, never for use."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from lipsync.models.audio_features import whisper_config
    from lipsync.models.unet import unet_config
    from lipsync.models.vae import to_legacy_vae_keys, vae_config

    root = Path(root)
    existing = [p for p in _all_weight_paths(root) if p.exists()]
    if existing and not is_untrained(root):
        raise WeightsError(
            f"{root} already holds weights ({existing[0]}) and no {UNTRAINED_MARKER}: not overwriting them",
            "scaffold into an empty folder",
        )
    root.mkdir(parents=True, exist_ok=True)
    _write_json(
        root / UNTRAINED_MARKER,
        {
            "untrained": True,
            "tiny": tiny,
            "note": "random weights written by `lipsync weights scaffold` for tests; they produce noise",
        },
    )
    noise = _Noise(seed)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(tiny))
        vae = AutoencoderKL.from_config(vae_config(tiny))
        whisper = WhisperForConditionalGeneration(WhisperConfig.from_dict(whisper_config(tiny)))

    for version in versions:
        layout = WeightsLayout(root, version)
        _write_json(layout.unet_config, unet_config(tiny))
        state = _random_state_dict(unet, noise)
        torch.save(state, layout.unet_weights)
        del state

    layout = WeightsLayout(root, versions[0] if versions else ALL_VERSIONS[0])
    _write_json(layout.vae_config, vae_config(tiny))
    torch.save(to_legacy_vae_keys(_random_state_dict(vae, noise)), layout.vae_dir / VAE_WEIGHT_FILES[0])
    _write_json(layout.whisper_config, whisper_config(tiny))
    torch.save(_random_state_dict(whisper, noise), layout.whisper_dir / WHISPER_WEIGHT_FILES[0])
    WhisperFeatureExtractor(feature_size=WHISPER_MEL_BINS, sampling_rate=AUDIO_SAMPLE_RATE).to_json_file(
        layout.whisper_preprocessor
    )
