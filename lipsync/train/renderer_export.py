"""Export trained alignment and rendering models as a landmark-prior weights folder `lipsync dub --weights
DIR` loads (the layout of lipsync/models/landmark_prior/weights.py).

* config.json: the run's widths and ablation switches (`render`), the transformer's config and N_l from
  where the transformer comes, and the inference reference counts of the training config
  (`inference_references`, `inference_lip_references`);
* alignment.safetensors, renderer.safetensors: this run's M_a and M_r (float32; stage rendering: the frozen
  M_a it trained with; stage alignment: M_r as initialised, untrained);
* landmark_transformer.safetensors: copied from a landmark-prior folder (`lipsync train landmarks`' export)
  or, without one, a freshly initialised, untrained transformer;
* lipsync.json: training info with `untrained_parts` (the networks this folder holds untrained, as the
  landmark trainer's export writes it); the folder is marked untrained when that list is not empty, so
  `dub` labels its output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import save_file
from torch import nn

from lipsync.io.files import atomic_path
from lipsync.models.landmark_prior.weights import (
    DEFAULT_VERSION,
    FAMILY,
    TRANSFORMER_PART,
    UNTRAINED_PARTS,
    FamilyConfig,
    WeightsLayout,
    untrained_parts,
)
from lipsync.models.weights import ModelEntry, write_model_entry
from lipsync.train.stabilized_export import float32_state

TRAINED_BY = "lipsync train renderer"


def transformer_untrained(folder: Path) -> bool:
    """Whether a landmark-prior folder's transformer is untrained."""
    return TRANSFORMER_PART in untrained_parts(folder)


def export_renderer(
    out: Path,
    family: FamilyConfig,
    alignment: nn.Module,
    renderer: nn.Module,
    transformer: Path | nn.Module,
    size: Literal["full", "tiny"],
    untrained_parts: list[str],
    training: dict[str, Any],
) -> Path:
    """Write the folder described above, atomically (a half-written export never replaces a good one).
    `transformer` is a landmark-prior folder to copy it from, or the network itself."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        layout = WeightsLayout(tmp)
        layout.folder.mkdir(parents=True)
        layout.config.write_text(json.dumps(family.to_json(), indent=2) + "\n", encoding="utf-8")
        save_file(float32_state(alignment), str(layout.alignment))
        save_file(float32_state(renderer), str(layout.renderer))
        if isinstance(transformer, nn.Module):
            save_file(float32_state(transformer), str(layout.transformer))
        else:
            shutil.copyfile(WeightsLayout(Path(transformer)).transformer, layout.transformer)
        info = {"trained_by": TRAINED_BY, **training, UNTRAINED_PARTS: untrained_parts}
        entry = ModelEntry(FAMILY, DEFAULT_VERSION, size, untrained=bool(untrained_parts), training=info)
        write_model_entry(tmp, entry)
    return out
