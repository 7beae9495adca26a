"""The networks a landmark-prior generator runs at inference, loaded from a weights folder: the landmark
transformer, the alignment model M_a and the rendering model M_r, frozen in eval mode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from lipsync.errors import WeightsError
from lipsync.models.checkpoint import load_strict, read_state_dict, require_weights_file
from lipsync.models.device import image_memory_format
from lipsync.models.landmark_prior.alignment import AlignmentModel
from lipsync.models.landmark_prior.landmark_transformer import (
    SEQUENCE_FRAMES,
    LandmarkTransformer,
    sinusoidal_positions,
)
from lipsync.models.landmark_prior.renderer import RenderingModel
from lipsync.models.landmark_prior.weights import (
    FAMILY,
    SCAFFOLD_HINT,
    FamilyConfig,
    WeightsLayout,
    check_weights,
    read_config,
)
from lipsync.models.weights import is_untrained

M = TypeVar("M", bound=nn.Module)


@dataclass
class LandmarkPriorModels:
    """The three networks of a weights folder, with its config."""

    config: FamilyConfig
    transformer: LandmarkTransformer
    alignment: AlignmentModel
    renderer: RenderingModel
    device: torch.device
    dtype: torch.dtype
    untrained: bool


def load_models(root: Path, device: torch.device, dtype: torch.dtype) -> LandmarkPriorModels:
    """Every network of ROOT's landmark-prior folder, strictly (a missing, extra or misshapen tensor is an
    error naming it and the fix), after a cheap check of every file (a missing or damaged one is named)."""
    root = Path(root)
    report = check_weights(root)
    if not report.ok:
        raise WeightsError(
            f"the {FAMILY} weights are missing or malformed.\n{report.format()}", SCAFFOLD_HINT
        )
    config = read_config(root)
    layout = WeightsLayout(root)
    transformer = _load(lambda: LandmarkTransformer(config.transformer), layout.transformer, "transformer")
    # Its position table is a computed buffer, not in the file: made now that the file fits the config.
    transformer.positions = sinusoidal_positions(SEQUENCE_FRAMES, config.transformer.model_dim)
    alignment = _load(lambda: AlignmentModel(config.render), layout.alignment, "alignment model")
    renderer = _load(lambda: RenderingModel(config.render), layout.renderer, "rendering model")
    transformer.to(device, dtype)
    image_format = image_memory_format(device)
    for network in (alignment, renderer):
        network.to(device, dtype)
        nn.Module.to(network, memory_format=image_format)  # type: ignore[call-overload]
    untrained = is_untrained(root, FAMILY)
    return LandmarkPriorModels(config, transformer, alignment, renderer, device, dtype, untrained)


def _load(build: Callable[[], M], path: Path, what: str) -> M:
    """A network built on the meta device (nothing allocated before the file's shapes are compared with
    the config's), its file's tensors assigned strictly (float32), frozen in eval mode."""
    require_weights_file(path, f"the {FAMILY} {what} weights", path.name, SCAFFOLD_HINT)
    fix = f"the file does not belong to its config.json: copy both from the same folder, or {SCAFFOLD_HINT}"
    with torch.device("meta"):
        network = build()
    load_strict(network, read_state_dict(path), path, torch.float32, fix)
    network.requires_grad_(False)
    return network.eval()
