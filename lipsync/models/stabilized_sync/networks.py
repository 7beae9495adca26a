"""The networks a stabilized-sync generator runs at inference, loaded from a weights folder.

G_L makes each new face from an identity reference, a pose reference and F_A; G_S closes the lips of the
identity references once per source frame (fed the mel of silence); the frozen AVSyncNet audio encoder
turns each frame's mel window into F_A (ablation setup C: wav2vec2 its waveform window, `wav2vec2.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipsync.errors import WeightsError
from lipsync.models.batch_norm_folding import fold_batch_norms
from lipsync.models.checkpoint import load_strict, read_state_dict, require_weights_file
from lipsync.models.device import image_memory_format
from lipsync.models.stabilized_sync.generator_net import TalkingFaceGenerator
from lipsync.models.stabilized_sync.mel import silent_mel_window
from lipsync.models.stabilized_sync.resnet_se34 import ResNetSE34
from lipsync.models.stabilized_sync.wav2vec2 import Wav2Vec2AudioEncoder, build_encoder, silent_wave_window
from lipsync.models.stabilized_sync.weights import (
    FAMILY,
    SCAFFOLD_HINT,
    FamilyConfig,
    WeightsLayout,
    check_weights,
    read_config,
)
from lipsync.models.weights import is_untrained

M = TypeVar("M", bound=nn.Module)


class AudioEncoder(nn.Module):
    """AVSyncNet's audio branch as the generators read it: (B, 1, 80, 16) mel windows → (B, 512) F_A,
    non-negative and not normalised (the AVSyncNet embedding before its L2 normalisation)."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.encoder = ResNetSE34(out_dim=out_dim)

    def forward(self, mels: Tensor) -> Tensor:
        return F.relu(self.encoder(mels))


@dataclass
class StabilizedSyncModels:
    """G_L, G_S (None when references are used as they are) and the audio encoder, in eval mode."""

    config: FamilyConfig
    generator: TalkingFaceGenerator
    silent_generator: TalkingFaceGenerator | None
    audio_encoder: AudioEncoder | Wav2Vec2AudioEncoder  # config.audio_encoder says which
    device: torch.device
    dtype: torch.dtype
    untrained: bool


def load_models(
    root: Path,
    device: torch.device,
    dtype: torch.dtype,
    silent_lip_references: bool | None = None,
    fold: bool = True,
) -> StabilizedSyncModels:
    """Every network of ROOT's stabilized-sync folder, strictly (a missing, extra or misshapen tensor is an
    error naming it). `silent_lip_references` overrides config.json's choice (False: no G_S is loaded).
    `fold` folds the generators' batch norms into their convolutions (inference); a trainer that writes
    a loaded generator back out keeps the file's layout with fold=False."""
    root = Path(root)
    report = check_weights(root)
    if not report.ok:
        raise WeightsError(
            f"the {FAMILY} weights are missing or malformed.\n{report.format()}", SCAFFOLD_HINT
        )
    config = read_config(root)
    layout = WeightsLayout(root)
    silent = config.silent_lip_references if silent_lip_references is None else silent_lip_references

    def generator_network() -> TalkingFaceGenerator:
        return TalkingFaceGenerator(config.generator)

    generator = _load(generator_network, layout.generator, "G_L", device, dtype, fold)
    silent_generator = None
    if silent:
        silent_generator = _load(generator_network, layout.silent_generator, "G_S", device, dtype, fold)
    audio = _load(lambda: build_audio_encoder(config), layout.audio_encoder, "F_A", device, dtype, fold)
    return StabilizedSyncModels(
        config, generator, silent_generator, audio, device, dtype, is_untrained(root, FAMILY)
    )


def build_audio_encoder(config: FamilyConfig) -> AudioEncoder | Wav2Vec2AudioEncoder:
    """F_A's encoder as config.json names it, with untouched weights."""
    if config.audio_encoder == "wav2vec2" and config.wav2vec2 is not None:
        return build_encoder(config.wav2vec2, config.generator.audio_dim, config.wav2vec2_normalize)
    return AudioEncoder(config.generator.audio_dim)


def silent_audio_input(config: FamilyConfig) -> np.ndarray:
    """One window of digital silence in the input form of config's audio encoder: (1, 1, 80, 16) mel or
    (1, 3800) waveform."""
    window = silent_wave_window() if config.audio_encoder == "wav2vec2" else silent_mel_window()
    return window[None]


def _load(
    build: Callable[[], M], path: Path, what: str, device: torch.device, dtype: torch.dtype, fold: bool
) -> M:
    """A network built on the meta device, its file's tensors assigned strictly, frozen in eval mode; with
    `fold`, a generator's batch norms are folded into the convolutions before them.
    The audio encoder's file holds the ResNetSE-34 alone (as AVSyncNet's `audio_encoder` saves it)."""
    require_weights_file(path, f"the {FAMILY} {what} weights", path.name, SCAFFOLD_HINT)
    try:
        with torch.device("meta"):
            network = build()
    except (ValueError, TypeError, KeyError, AssertionError) as exc:  # a config the network's code refuses
        raise WeightsError(
            f"the {FAMILY} config.json describes no {what} that can be built: {type(exc).__name__}: {exc}",
            SCAFFOLD_HINT,
        ) from exc
    state = read_state_dict(path)
    if isinstance(network, AudioEncoder):
        state = {f"encoder.{key}": value for key, value in state.items()}
    load_strict(network, state, path, dtype)
    network.requires_grad_(False)
    network.to(device)
    nn.Module.to(network, memory_format=image_memory_format(device))  # type: ignore[call-overload]
    network.eval()
    if fold and isinstance(network, TalkingFaceGenerator):
        fold_batch_norms(network)
    return network
