"""Export a trained landmark transformer as a landmark-prior weights folder `lipsync dub --weights DIR` loads.

DIR/ is the layout of lipsync/models/landmark_prior/weights.py. The transformer is this run's (float32);
config.json, M_a (alignment.safetensors) and M_r (renderer.safetensors) come from:

* `base_weights` (a folder `lipsync train renderer` exported, say): copied as they are; the folder is marked
  untrained only when the base's M_a or M_r is (listed in its `untrained_parts`; a base marked untrained
  without that list is a scaffold: both are);
* no base: a random scaffold of M_a and M_r (`scaffold_weights`) — a partial folder, marked untrained in
  lipsync.json (dub labels its output), with `untrained_parts: ["alignment", "renderer"]` in its training
  info. Its faces are noise, but it runs, and the transformer in it is ready for a renderer run or an
  inspection strip (`lipsync landmarks-inspect`).

lipsync.json's training info: trained_by, steps, base_weights, the base's own training info, the losses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from torch import nn

from lipsync.io.files import atomic_path
from lipsync.models.landmark_prior.weights import (
    ALIGNMENT_PART,
    DEFAULT_VERSION,
    FAMILY,
    RENDERER_PART,
    UNTRAINED_PARTS,
    FamilyConfig,
    WeightsLayout,
    scaffold_weights,
    untrained_parts,
)
from lipsync.models.weights import ModelEntry, read_weights_manifest, write_model_entry
from lipsync.train.stabilized_export import float32_state

TRAINED_BY = "lipsync train landmarks"
SCAFFOLDED_PARTS = (ALIGNMENT_PART, RENDERER_PART)


def export_landmarks(
    out: Path,
    transformer: nn.Module,
    family: FamilyConfig,
    base: Path | None,
    size: Literal["full", "tiny"],
    training: dict[str, Any],
) -> Path:
    """Write the folder described above, atomically (a half-written export never replaces a good one)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any]
    with atomic_path(out) as tmp:
        layout = WeightsLayout(tmp)
        if base is None:
            scaffold_weights(tmp, tiny=size == "tiny", face_size=family.face_size)
            untrained, info = True, {"base_weights": None, UNTRAINED_PARTS: list(SCAFFOLDED_PARTS)}
        else:
            base_layout = WeightsLayout(Path(base))
            layout.folder.mkdir(parents=True)
            for source, target in (
                (base_layout.alignment, layout.alignment),
                (base_layout.renderer, layout.renderer),
            ):
                shutil.copyfile(source, target)
            entry = read_weights_manifest(base).get(FAMILY)
            parts = base_untrained_parts(base)
            untrained, info = bool(parts), {"base_weights": str(base), UNTRAINED_PARTS: parts}
            info["base_training"] = entry.training if entry else {}
        layout.config.write_text(json.dumps(family.to_json(), indent=2) + "\n", encoding="utf-8")
        save_file(float32_state(transformer), str(layout.transformer))
        entry_info = {"trained_by": TRAINED_BY, **training, **info}
        write_model_entry(
            tmp, ModelEntry(FAMILY, DEFAULT_VERSION, size, untrained=untrained, training=entry_info)
        )
    return out


def base_untrained_parts(base: Path) -> list[str]:
    """Which of M_a and M_r a base folder holds untrained (the transformer is the one this run replaces)."""
    return [part for part in untrained_parts(base) if part in SCAFFOLDED_PARTS]
