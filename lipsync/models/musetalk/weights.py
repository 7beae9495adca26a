"""The weights folder: its layout, a cheap check of every file, and untrained scaffolds for tests.

The layout is MuseTalk's own `models/` folder, so a user can point us at an existing download.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch

from lipsync.config import (
    AUDIO_SAMPLE_RATE,
    IMAGE_CHANNELS,
    LATENT_CHANNELS,
    UNET_IN_CHANNELS,
    WHISPER_ENCODER_LAYERS,
    WHISPER_HIDDEN_SIZE,
    WHISPER_MEL_BINS,
    WHISPER_SEGMENT_SAMPLES,
    WHISPER_SEGMENT_SECONDS,
    ModelVersion,
)
from lipsync.models.hub import HubFile
from lipsync.models.scaffold import Noise, random_state_dict
from lipsync.models.weights import (
    ModelEntry,
    WeightsReport,
    check_json,
    check_weights_file,
    is_untrained,
    refuse_to_overwrite_trained,
    write_model_entry,
)

FAMILY = "musetalk"
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

# The released files on the Hugging Face Hub (`lipsync weights download`). The VAE and whisper come as
# .safetensors: the loaders take them, and they are read without unpickling anything.
UNET_REPO = "TMElyralab/MuseTalk"
VAE_REPO = "stabilityai/sd-vae-ft-mse"
WHISPER_REPO = "openai/whisper-tiny"


def hub_files(version: ModelVersion) -> list[HubFile]:
    """The Hub files one version needs, each with its place in the layout."""
    unet_dir = UNET_DIRS[version]
    vae_weights, whisper_weights = VAE_WEIGHT_FILES[1], WHISPER_WEIGHT_FILES[1]
    same = [
        (UNET_REPO, f"{unet_dir}/{UNET_CONFIG_FILE}"),
        (UNET_REPO, f"{unet_dir}/{UNET_WEIGHT_FILES[version]}"),
    ]
    return [HubFile(repo, name, name) for repo, name in same] + [
        HubFile(VAE_REPO, CONFIG_FILE, f"{VAE_DIR}/{CONFIG_FILE}"),
        HubFile(
            VAE_REPO,
            vae_weights,
            f"{VAE_DIR}/{vae_weights}",
            satisfied_by=tuple(f"{VAE_DIR}/{n}" for n in VAE_WEIGHT_FILES if n != vae_weights),
        ),
        HubFile(WHISPER_REPO, CONFIG_FILE, f"{WHISPER_DIR}/{CONFIG_FILE}"),
        HubFile(WHISPER_REPO, PREPROCESSOR_FILE, f"{WHISPER_DIR}/{PREPROCESSOR_FILE}"),
        HubFile(
            WHISPER_REPO,
            whisper_weights,
            f"{WHISPER_DIR}/{whisper_weights}",
            satisfied_by=tuple(f"{WHISPER_DIR}/{n}" for n in WHISPER_WEIGHT_FILES if n != whisper_weights),
        ),
    ]


def download_command(root: Path, version: ModelVersion | None = None) -> str:
    """The one command that fetches what ROOT lacks for `version` (v1.5 when None)."""
    extra = " --version v1" if version == "v1" else ""
    return f"lipsync weights download {root}{extra}"


def download_hint(root: Path, version: ModelVersion | None) -> str:
    """What a report of missing files says to do: the download first, the test scaffold second."""
    also = " (add --version v1 for v1.0)" if version is None else ""
    command = download_command(root, version)
    return f"get them with `{command}` (from the Hugging Face Hub){also}\nor {SCAFFOLD_HINT}"


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
# whisper-tiny's log-mel front end: the feature extractor builds its filter bank and window from these as
# the file is read, so a changed size would cost memory before any check could refuse it.
WHISPER_N_FFT = 400
WHISPER_HOP_LENGTH = 160
PREPROCESSOR_CONFIG_EXPECTED: dict[str, Any] = {
    "feature_size": WHISPER_MEL_BINS,
    "sampling_rate": AUDIO_SAMPLE_RATE,
    "n_fft": WHISPER_N_FFT,
    "hop_length": WHISPER_HOP_LENGTH,
    "chunk_length": WHISPER_SEGMENT_SECONDS,
    "n_samples": WHISPER_SEGMENT_SAMPLES,
    "nb_max_frames": WHISPER_SEGMENT_SAMPLES // WHISPER_HOP_LENGTH,
}


def check_weights(root: Path, version: ModelVersion | None = None) -> WeightsReport:
    """Check every file one or both versions need: present, missing or malformed (no full loads)."""
    root = Path(root)
    versions = ALL_VERSIONS if version is None else (version,)
    layouts = [WeightsLayout(root, v) for v in versions]
    shared = layouts[0]
    checks = [check_json(layout.unet_config, UNET_CONFIG_EXPECTED) for layout in layouts]
    checks += [check_weights_file(layout.unet_weights) for layout in layouts]
    checks += [
        check_json(shared.vae_config, VAE_CONFIG_EXPECTED),
        check_weights_file(shared.vae_weights),
        check_json(shared.whisper_config, WHISPER_CONFIG_EXPECTED),
        check_weights_file(shared.whisper_weights),
        check_json(shared.whisper_preprocessor, PREPROCESSOR_CONFIG_EXPECTED),
    ]
    title = "MuseTalk " + ", ".join(VERSION_LABELS[v] for v in versions)
    return WeightsReport(
        root,
        FAMILY,
        title,
        tuple(checks),
        is_untrained(root, FAMILY),
        SOURCES,
        EXPECTED_TREE,
        download_hint(root, version),
    )


def recognise(root: Path) -> bool:
    """True when ROOT has the released layout of some MuseTalk version (a UNet config in its folder)."""
    return any(WeightsLayout(Path(root), v).unet_config.is_file() for v in ALL_VERSIONS)


# --- scaffolding ----------------------------------------------------------------------------------


def _all_weight_paths(root: Path) -> list[Path]:
    paths = [root / UNET_DIRS[v] / UNET_WEIGHT_FILES[v] for v in ALL_VERSIONS]
    paths += [root / VAE_DIR / n for n in VAE_WEIGHT_FILES] + [
        root / WHISPER_DIR / n for n in WHISPER_WEIGHT_FILES
    ]
    return paths


def _default_version(versions: Sequence[ModelVersion]) -> ModelVersion:
    """The version a loader picks when none is asked for: v1.5 when the folder has it."""
    return "v15" if "v15" in versions or not versions else versions[0]


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def scaffold_weights(
    root: Path, tiny: bool = False, versions: Sequence[ModelVersion] = ALL_VERSIONS, seed: int = 0
) -> None:
    """Write randomly initialised weights in the real layout, marked untrained. For tests, never for use."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from lipsync.models.musetalk.audio_features import whisper_config
    from lipsync.models.musetalk.unet import unet_config
    from lipsync.models.musetalk.vae import to_legacy_vae_keys, vae_config

    root = Path(root)
    refuse_to_overwrite_trained(root, FAMILY, _all_weight_paths(root), "MuseTalk")
    root.mkdir(parents=True, exist_ok=True)
    write_model_entry(
        root, ModelEntry(FAMILY, _default_version(versions), "tiny" if tiny else "full", untrained=True)
    )
    noise = Noise(seed)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(tiny))
        vae = AutoencoderKL.from_config(vae_config(tiny))
        whisper = WhisperForConditionalGeneration(WhisperConfig.from_dict(whisper_config(tiny)))

    for version in versions:
        layout = WeightsLayout(root, version)
        _write_json(layout.unet_config, unet_config(tiny))
        state = random_state_dict(unet, noise)
        torch.save(state, layout.unet_weights)
        del state

    layout = WeightsLayout(root, versions[0] if versions else ALL_VERSIONS[0])
    _write_json(layout.vae_config, vae_config(tiny))
    torch.save(to_legacy_vae_keys(random_state_dict(vae, noise)), layout.vae_dir / VAE_WEIGHT_FILES[0])
    _write_json(layout.whisper_config, whisper_config(tiny))
    torch.save(random_state_dict(whisper, noise), layout.whisper_dir / WHISPER_WEIGHT_FILES[0])
    WhisperFeatureExtractor(feature_size=WHISPER_MEL_BINS, sampling_rate=AUDIO_SAMPLE_RATE).to_json_file(
        layout.whisper_preprocessor
    )
