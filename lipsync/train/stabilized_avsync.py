"""AVSyncNet as `lipsync train syncnet` trains it (`kind: avsyncnet`), and its files.

The network is `lipsync.models.stabilized_sync.avsyncnet.AVSyncNet` (ResNet-50 lip encoder, ResNetSE-34
audio encoder). A `tiny` AVSyncNet (configs with width_divisor > 1, tests only) swaps the ResNet-50 for a
four-conv lip encoder; its audio encoder is the real ResNetSE-34, so its file is what inference reads.

Files:
* `avsyncnet-*.safetensors`: the whole AVSyncNet state dict; the safetensors metadata holds the spec.
* `audio_encoder.safetensors`: `AVSyncNet.audio_encoder`'s state dict alone (the ResNetSE-34), the file
  the stabilized-sync weights folder holds (`lipsync.models.stabilized_sync.weights.AUDIO_ENCODER_FILE`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from lipsync.errors import WeightsError
from lipsync.io.files import atomic_path
from lipsync.models.checkpoint import load_strict
from lipsync.models.stabilized_sync.avsyncnet import AVSYNC_FACE_SIZE, FACE_CHANNELS, AVSyncNet
from lipsync.models.stabilized_sync.generator_net import PAPER_FACE_SIZE
from lipsync.models.stabilized_sync.mel import SYNC_FRAMES
from lipsync.models.stabilized_sync.resnet_se34 import ResNetSE34
from lipsync.train.config import ConfigError, SyncNetTrainConfig
from lipsync.train.data.format import PreparedClip
from lipsync.train.stabilized_data import family_crops
from lipsync.train.stabilized_export import float32_state
from lipsync.train.syncnet_data import FacePreparer

AVSYNC_FORMAT = "lipsync-avsyncnet"
METADATA_FORMAT = "format"
METADATA_SPEC = "spec"
TINY_LIP_WIDTHS = (16, 32, 64, 128)  # the tiny lip encoder's strided 3 x 3 convs


@dataclass(frozen=True)
class AVSyncSpec:
    """What an AVSyncNet file is, and the input the syncnet trainer's pair source makes for it."""

    kind: Literal["avsyncnet"] = "avsyncnet"
    frames: int = SYNC_FRAMES  # 5 faces per sample
    image_size: int = AVSYNC_FACE_SIZE  # faces resized to 224, lower half kept: (15, 112, 224)
    face_size: int = PAPER_FACE_SIZE  # faces are first cut at the generator's size (the family crop)
    tiny: bool = False


class TinyLipEncoder(nn.Module):
    """(B, 15, 112, 224) → (B, 128): strided conv-BN-ReLU layers and a global average pool (tests)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = FACE_CHANNELS
        for width in TINY_LIP_WIDTHS:
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.layers = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, lips: Tensor) -> Tensor:
        features: Tensor = self.layers(lips)
        return features


def build_avsyncnet(spec: AVSyncSpec) -> AVSyncNet:
    """A randomly initialised AVSyncNet (the paper's), or its tiny test variant."""
    if not spec.tiny:
        return AVSyncNet()
    with torch.device("meta"):  # the ResNet-50 is replaced: skip initialising its 24 M parameters
        model = AVSyncNet()
    model.face_encoder = TinyLipEncoder()  # type: ignore[assignment]
    model.face_head = nn.Linear(TINY_LIP_WIDTHS[-1], model.face_head.out_features)
    model.audio_encoder = ResNetSE34(out_dim=model.face_head.out_features)
    return model


def save_avsyncnet(model: AVSyncNet, spec: AVSyncSpec, path: Path) -> Path:
    """The whole AVSyncNet, float32, with its spec in the metadata; written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = float32_state(model)
    metadata = {METADATA_FORMAT: AVSYNC_FORMAT, METADATA_SPEC: json.dumps(asdict(spec))}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def save_audio_encoder(encoder: nn.Module, path: Path) -> Path:
    """The ResNetSE-34 state dict alone (`AVSyncNet.audio_encoder`), as the weights folder holds it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(float32_state(encoder), str(tmp))
    return path


def read_avsync_spec(path: Path) -> AVSyncSpec:
    """The spec in an AVSyncNet file's metadata, or WeightsError saying what the file is not."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"AVSyncNet file {path} does not exist",
            "train one: lipsync train syncnet --config configs/train/avsyncnet.yaml",
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get(METADATA_FORMAT) != AVSYNC_FORMAT:
            raise ValueError(f"its format is {metadata.get(METADATA_FORMAT)!r}, not {AVSYNC_FORMAT!r}")
        return AVSyncSpec(**json.loads(metadata[METADATA_SPEC]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(
            f"{path} is not an AVSyncNet file of `lipsync train syncnet` ({exc})",
            "give an avsyncnet-*.safetensors file written by a `kind: avsyncnet` SyncNet run",
        ) from exc


def load_avsyncnet(path: Path, device: torch.device | str = "cpu") -> tuple[AVSyncNet, AVSyncSpec]:
    """Strictly load an AVSyncNet file (eval mode, float32, on `device`)."""
    from safetensors.torch import load_file

    spec = read_avsync_spec(path)
    with torch.device("meta"):
        model = build_avsyncnet(spec)
    load_strict(model, load_file(str(path), device="cpu"), Path(path), torch.float32)
    return model.to(device).eval(), spec


def avsync_spec(config: SyncNetTrainConfig) -> AVSyncSpec:
    """The AVSyncNet a `kind: avsyncnet` config asks for; ConfigError naming a field it cannot use."""
    fixed = {"frames": SYNC_FRAMES, "image_size": AVSYNC_FACE_SIZE}
    for name, value in fixed.items():
        if getattr(config, name) != value:
            raise ConfigError(
                f"{name} is {getattr(config, name)}; AVSyncNet takes {value}",
                f"set {name}: {value} for kind avsyncnet (paper §3.4: 5 faces, lower halves of 224 px)",
            )
    if config.negative_min_offset < SYNC_FRAMES:
        raise ConfigError(
            f"negative_min_offset is {config.negative_min_offset}: its audio would overlap the faces' window",
            f"use at least {SYNC_FRAMES} for kind avsyncnet (paper: negatives from a non-overlapping part)",
        )
    if config.avsync_face_size < 2:
        raise ConfigError(f"avsync_face_size is {config.avsync_face_size}", "use the generator's size, 96")
    return AVSyncSpec(face_size=config.avsync_face_size, tiny=config.width_divisor > 1)


def avsync_clip_faces(clip: PreparedClip, face_size: int) -> np.ndarray:
    """(N, face_size, face_size, 3) uint8: a clip's faces cut as the family crops them at `face_size`; the
    pair source resizes them to 224 and halves them (`prepare_lips` per frame) when it builds a batch."""
    return family_crops(clip, face_size)


def avsync_faces(spec: AVSyncSpec) -> FacePreparer:
    """The pair source's face preparer for `spec` (picklable, for DataLoader workers)."""
    return partial(avsync_clip_faces, face_size=spec.face_size)
