"""Export a trained UNet as a weights folder that `lipsync dub|avatar|serve --weights DIR` loads as is.

DIR/
  musetalkV15/unet.pth               the UNet state dict (float32), the released v1.5 file name
  musetalkV15/musetalk.json          its diffusers config
  musetalkV15/lipsync-training.json  audio window T, stage and steps: inference reads T from here
  sd-vae/, whisper/                  links to the frozen models the UNet was trained with
  UNTRAINED.json                     only when those frozen models were untrained scaffolds
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipsync.config import ModelVersion
from lipsync.models.loading import TrainingInfo
from lipsync.models.weights import (
    TRAINING_INFO_FILE,
    UNET_CONFIG_FILE,
    UNET_DIRS,
    UNET_WEIGHT_FILES,
    UNTRAINED_MARKER,
    VAE_DIR,
    WHISPER_DIR,
    is_untrained,
)

EXPORT_VERSION: ModelVersion = "v15"
TRAINED_BY = "lipsync train unet"


def export_unet(
    unet: nn.Module, unet_config: dict[str, Any], base_weights: Path, out: Path, info: TrainingInfo
) -> Path:
    """Write the folder described above, atomically (a half-written export never replaces a good one)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex}-{out.name}")
    unet_dir = tmp / UNET_DIRS[EXPORT_VERSION]
    unet_dir.mkdir(parents=True)
    try:
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in unet.state_dict().items()}
        torch.save(state, unet_dir / UNET_WEIGHT_FILES[EXPORT_VERSION])
        (unet_dir / UNET_CONFIG_FILE).write_text(json.dumps(unet_config, indent=2) + "\n", encoding="utf-8")
        (unet_dir / TRAINING_INFO_FILE).write_text(
            json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8"
        )
        base = Path(base_weights).resolve()
        for name in (VAE_DIR, WHISPER_DIR):
            _link_or_copy(base / name, tmp / name)
        if is_untrained(base):
            note = {"untrained": True, "why": f"the frozen VAE and whisper in {base} are untrained scaffolds"}
            (tmp / UNTRAINED_MARKER).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".old-{uuid.uuid4().hex}-{out.name}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source, target_is_directory=True)
    except OSError:  # file systems without symlinks
        shutil.copytree(source, target)
