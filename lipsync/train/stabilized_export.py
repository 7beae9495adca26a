"""Export a trained stabilized-sync generator as a weights folder `lipsync dub --weights DIR` loads.

DIR/ is the layout of lipsync/models/stabilized_sync/weights.py: stabilized-sync/config.json (face size,
generator widths, whether G_S closes the references), generator.safetensors (G_L),
silent_generator.safetensors (G_S), audio_encoder.safetensors (the ResNetSE-34 state dict alone; with the
wav2vec2 encoder of ablation setup C, the wav2vec2 and its projection, config.json holding its Hugging Face
config), all float32, and lipsync.json with the family, the training info (stage, steps, losses, ...) and
`untrained: false`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lipsync.io.files import atomic_path
from lipsync.models.stabilized_sync.weights import DEFAULT_VERSION, FAMILY, FamilyConfig, WeightsLayout
from lipsync.models.weights import ModelEntry, write_model_entry

TRAINED_BY = "lipsync train stabilized"


def export_stabilized(
    out: Path,
    config: FamilyConfig,
    generator: nn.Module,
    silent_generator: nn.Module,
    audio_encoder: nn.Module,
    size: Literal["full", "tiny"],
    training: dict[str, Any],
) -> Path:
    """Write the folder described above, atomically (a half-written export never replaces a good one)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        layout = WeightsLayout(tmp)
        layout.folder.mkdir(parents=True)
        layout.config.write_text(json.dumps(config.to_json(), indent=2) + "\n", encoding="utf-8")
        networks = (
            (layout.generator, generator),
            (layout.silent_generator, silent_generator),
            (layout.audio_encoder, audio_encoder),
        )
        for path, network in networks:
            save_file(float32_state(network), str(path))
        write_model_entry(tmp, ModelEntry(FAMILY, DEFAULT_VERSION, size, untrained=False, training=training))
    return out


def float32_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """A network's state dict on the CPU, floating tensors as float32, contiguous (safetensors-ready)."""
    return {
        key: value.detach()
        .to("cpu", torch.float32 if value.is_floating_point() else value.dtype)
        .contiguous()
        for key, value in network.state_dict().items()
    }
