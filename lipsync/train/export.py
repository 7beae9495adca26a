"""Export a trained UNet as a weights folder that `lipsync dub|avatar|serve --weights DIR` loads as is.

DIR/
  musetalkV15/unet.pth               the UNet state dict (float32), the released v1.5 file name
  musetalkV15/musetalk.json          its diffusers config
  sd-vae/, whisper/                  links to the frozen models the UNet was trained with
  lipsync.json                       family, version, training info (audio window T, stage, steps: inference
                                     reads T from here), and `untrained` when the frozen models were scaffolds
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipsync.config import ModelVersion
from lipsync.io.files import atomic_path
from lipsync.models.musetalk.loading import TrainingInfo
from lipsync.models.musetalk.weights import (
    FAMILY,
    UNET_CONFIG_FILE,
    UNET_DIRS,
    UNET_WEIGHT_FILES,
    VAE_DIR,
    WHISPER_DIR,
)
from lipsync.models.weights import ModelEntry, is_untrained, read_weights_manifest, write_model_entry

EXPORT_VERSION: ModelVersion = "v15"
TRAINED_BY = "lipsync train unet"


def export_unet(
    unet: nn.Module, unet_config: dict[str, Any], base_weights: Path, out: Path, info: TrainingInfo
) -> Path:
    """Write the folder described above, atomically (a half-written export never replaces a good one)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = Path(base_weights).resolve()
    with atomic_path(out) as tmp:
        unet_dir = tmp / UNET_DIRS[EXPORT_VERSION]
        unet_dir.mkdir(parents=True)
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in unet.state_dict().items()}
        torch.save(state, unet_dir / UNET_WEIGHT_FILES[EXPORT_VERSION])
        (unet_dir / UNET_CONFIG_FILE).write_text(json.dumps(unet_config, indent=2) + "\n", encoding="utf-8")
        for name in (VAE_DIR, WHISPER_DIR):
            _link_or_copy(base / name, tmp / name)
        size = read_weights_manifest(base).get(FAMILY, ModelEntry(FAMILY)).size
        write_model_entry(
            tmp, ModelEntry(FAMILY, EXPORT_VERSION, size, is_untrained(base, FAMILY), training=asdict(info))
        )
    return out


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source, target_is_directory=True)
    except OSError:  # file systems without symlinks
        shutil.copytree(source, target)
