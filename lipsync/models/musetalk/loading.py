"""Load the released MuseTalk networks strictly: every tensor in the files matched, or an error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from lipsync.config import AUDIO_WINDOW_CHOICES, REFERENCE_AUDIO_WINDOW, ModelVersion
from lipsync.errors import WeightsError
from lipsync.models.checkpoint import listed_keys, load_strict, read_state_dict
from lipsync.models.device import image_memory_format
from lipsync.models.musetalk.networks import MuseTalkModels
from lipsync.models.musetalk.vae import convert_legacy_vae_keys
from lipsync.models.musetalk.weights import (
    FAMILY,
    TRAINING_INFO_FILE,
    VERSION_LABELS,
    WeightsLayout,
    check_weights,
    download_command,
)
from lipsync.models.weights import WEIGHTS_MANIFEST, read_weights_manifest

# Keys of a WhisperForConditionalGeneration (or WhisperModel) checkpoint: the encoder's, and the rest we skip.
WHISPER_ENCODER_PREFIXES = ("model.encoder.", "encoder.")
WHISPER_SKIPPED_PREFIXES = ("model.decoder.", "decoder.", "proj_out.")


@dataclass(frozen=True)
class TrainingInfo:
    """What `lipsync train unet` records next to an exported UNet (absent for the released weights)."""

    audio_window: int = REFERENCE_AUDIO_WINDOW
    stage: int | None = None
    steps: int | None = None
    trained_by: str | None = None


def read_training_info(root: Path, version: ModelVersion) -> TrainingInfo:
    """The training info of ROOT's UNet: from lipsync.json, or (exports made before it) the
    lipsync-training.json beside the UNet; the released weights' defaults when there is neither."""
    entry = read_weights_manifest(root).get(FAMILY)
    path = Path(root) / WEIGHTS_MANIFEST
    data: dict[str, Any] | None = entry.training if entry is not None and entry.training else None
    if data is None:
        path = WeightsLayout(Path(root), version).unet_dir / TRAINING_INFO_FILE
        if not path.is_file():
            return TrainingInfo()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightsError(
                f"cannot read {path}: {exc}", "export the UNet again (`lipsync train`)"
            ) from exc
    try:
        info = TrainingInfo(**{k: v for k, v in data.items() if k in TrainingInfo.__dataclass_fields__})
    except TypeError as exc:
        raise WeightsError(f"cannot read {path}: {exc}", "export the UNet again (`lipsync train`)") from exc
    if info.audio_window not in AUDIO_WINDOW_CHOICES:
        raise WeightsError(
            f"{path} gives audio_window {info.audio_window}", f"it must be one of {AUDIO_WINDOW_CHOICES}"
        )
    return info


def _read_json(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config


def _whisper_encoder_state(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    encoder: dict[str, torch.Tensor] = {}
    stray: list[str] = []
    for key, tensor in state.items():
        prefix = next((p for p in WHISPER_ENCODER_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            encoder[key[len(prefix) :]] = tensor
        elif not key.startswith(WHISPER_SKIPPED_PREFIXES):
            stray.append(key)
    if stray:
        raise WeightsError(
            f"{source} has keys of no whisper model: {listed_keys(stray)}",
            "use the pytorch_model.bin or model.safetensors of openai/whisper-tiny",
        )
    return encoder


def _prepare(model: nn.Module, device: torch.device, image_model: bool) -> None:
    model.eval().requires_grad_(False)
    nn.Module.to(model, device)  # nn.Module.to: diffusers' override warns about dtypes we already set
    if image_model:  # torch's stubs lack the memory_format overload of Module.to
        nn.Module.to(model, memory_format=image_memory_format(device))  # type: ignore[call-overload]


def load_models(
    root: Path, version: ModelVersion, device: torch.device, dtype: torch.dtype
) -> MuseTalkModels:
    """Check, then strictly load the VAE, the UNet of `version` and the whisper encoder, ready for inference.

    Whisper runs in float32 on the CPU: it encodes 30 s at a time, so its cost is small, and bfloat16 would
    round the log-mel inputs and hidden states twice. Elsewhere it runs in the UNet dtype (as the reference).
    """
    root = Path(root)
    report = check_weights(root, version)
    if not report.ok:
        raise WeightsError(
            f"MuseTalk {VERSION_LABELS[version]} weights are missing or malformed.\n{report.format()}",
            f"run `{download_command(root, version)}`, or put the files listed above, from the sources "
            f"given, into {root}",
        )
    layout = WeightsLayout(root, version)
    audio_dtype = torch.float32 if device.type == "cpu" else dtype
    unet = load_unet(layout.unet_config, layout.unet_weights, dtype)
    _prepare(cast(nn.Module, unet), device, image_model=True)
    encoder, feature_extractor = load_whisper(layout, device, audio_dtype)
    info = read_training_info(root, version)
    return MuseTalkModels(
        load_vae(layout, device, dtype),
        unet,
        encoder,
        feature_extractor,
        device,
        dtype,
        version,
        report.untrained,
        layout.vae_weights,
        info.audio_window,
    )


def load_unet(config: Path, weights: Path, dtype: torch.dtype) -> UNet2DConditionModel:
    """The UNet of musetalk.json with every tensor of the weights file, on the CPU (left trainable)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_read_json(config))
    load_strict(unet, read_state_dict(weights), weights, dtype)
    return unet


def load_vae(layout: WeightsLayout, device: torch.device, dtype: torch.dtype) -> AutoencoderKL:
    """The frozen sd-vae-ft-mse of the layout, ready to run."""
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(_read_json(layout.vae_config))
    load_strict(vae, convert_legacy_vae_keys(read_state_dict(layout.vae_weights)), layout.vae_weights, dtype)
    _prepare(vae, device, image_model=True)
    return vae


def load_whisper(
    layout: WeightsLayout, device: torch.device, dtype: torch.dtype
) -> tuple[WhisperEncoder, WhisperFeatureExtractor]:
    """The frozen whisper-tiny encoder of the layout and its log-mel feature extractor."""
    with torch.device("meta"):
        encoder = WhisperEncoder(WhisperConfig.from_dict(_read_json(layout.whisper_config)))
    whisper_state = _whisper_encoder_state(read_state_dict(layout.whisper_weights), layout.whisper_weights)
    load_strict(encoder, whisper_state, layout.whisper_weights, dtype)
    _prepare(encoder, device, image_model=False)
    feature_extractor = cast(
        WhisperFeatureExtractor, WhisperFeatureExtractor.from_json_file(str(layout.whisper_preprocessor))
    )
    return encoder, feature_extractor
