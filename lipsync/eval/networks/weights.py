"""Where `lipsync eval` finds the public metric networks' weight files, and a scaffold of them for tests.

The files keep their official names in one folder (default ./models/eval or $LIPSYNC_EVAL_WEIGHTS):

    models/eval/
      syncnet_v2.model                        LSE-D / LSE-C  (joonson/syncnet_python, download_model.sh)
      pt_inception-2015-12-05-6726825d.pth    FID            (mseitzer/pytorch-fid release)
      backbone.pth                            CSIM           (insightface arcface_torch, an iresnet)
      alexnet-owt-7be5be79.pth                LPIPS backbone (torchvision's ImageNet AlexNet)
      lpips-v0.1-alex.pth                     LPIPS layers   (the lpips package's weights/v0.1/alex.pth)

Each may also be given on its own (`--syncnet-v2`, `--inception`, `--arcface`). Without
lpips-v0.1-alex.pth in the folder, an installed lpips package's own file is used (found, not imported).
A metric whose file is absent is reported as skipped, naming the file; it is never estimated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lipsync.config import DEFAULT_EVAL_WEIGHTS
from lipsync.errors import WeightsError
from lipsync.eval.networks.arcface import ARCFACE_SOURCE, save_random_arcface
from lipsync.eval.networks.inception import FID_WEIGHTS_FILE, FID_WEIGHTS_SOURCE, save_random_fid_inception
from lipsync.eval.networks.lpips_net import (
    ALEXNET_FILE,
    ALEXNET_URL,
    LPIPS_LINEAR_FILE,
    LPIPS_LINEAR_SOURCE,
    package_linear_file,
    save_random_alexnet,
    save_random_lpips_linear,
)
from lipsync.eval.networks.syncnet_v2 import SYNCNET_V2_FILE, SYNCNET_V2_SOURCE, save_random_syncnet_v2
from lipsync.models.weights import UNTRAINED_MARKER

ARCFACE_FILE = "backbone.pth"  # the name insightface's arcface_torch releases give the iresnet weights


SOURCES = {  # where each file comes from, for the skipped entries
    "syncnet_v2": SYNCNET_V2_SOURCE,
    "inception": FID_WEIGHTS_SOURCE,
    "arcface": ARCFACE_SOURCE,
    "alexnet": f"torchvision's ImageNet AlexNet, {ALEXNET_URL}; `lipsync weights download --eval` fetches it",
    "lpips_linear": LPIPS_LINEAR_SOURCE,
}


@dataclass(frozen=True)
class EvalWeightFiles:
    """The weight file each metric network would load (they may not exist)."""

    syncnet_v2: Path
    inception: Path
    arcface: Path
    syncnet: Path | None = None  # our own SyncNet (`lipsync train syncnet`), only when given
    alexnet: Path = Path(ALEXNET_FILE)  # LPIPS backbone (in_folder puts it in the folder)
    lpips_linear: Path = Path(LPIPS_LINEAR_FILE)  # LPIPS linear layers

    @classmethod
    def in_folder(
        cls,
        folder: Path = DEFAULT_EVAL_WEIGHTS,
        syncnet_v2: Path | None = None,
        inception: Path | None = None,
        arcface: Path | None = None,
        syncnet: Path | None = None,
        alexnet: Path | None = None,
        lpips_linear: Path | None = None,
    ) -> EvalWeightFiles:
        folder = Path(folder)
        if lpips_linear is None:
            in_folder = folder / LPIPS_LINEAR_FILE
            lpips_linear = in_folder if in_folder.is_file() else package_linear_file() or in_folder
        return cls(
            syncnet_v2=syncnet_v2 or folder / SYNCNET_V2_FILE,
            inception=inception or folder / FID_WEIGHTS_FILE,
            arcface=arcface or folder / ARCFACE_FILE,
            syncnet=syncnet,
            alexnet=alexnet or folder / ALEXNET_FILE,
            lpips_linear=lpips_linear,
        )


def is_untrained_file(path: Path) -> bool:
    """Whether `path` was written by `scaffold_eval_weights` (listed in its folder's UNTRAINED marker)."""
    marker = Path(path).parent / UNTRAINED_MARKER
    if not marker.is_file():
        return False
    try:
        listed = json.loads(marker.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return True  # an unreadable marker still means "not real weights"
    return Path(path).name in listed


def scaffold_eval_weights(folder: Path, arcface_variant: str = "r18", seed: int = 0) -> list[Path]:
    """Random weights in the official layouts, marked UNTRAINED: for tests, never for measuring."""
    folder = Path(folder)
    names = [SYNCNET_V2_FILE, FID_WEIGHTS_FILE, ARCFACE_FILE, ALEXNET_FILE, LPIPS_LINEAR_FILE]
    existing = [folder / n for n in names if (folder / n).exists() and not is_untrained_file(folder / n)]
    if existing:
        raise WeightsError(
            f"{existing[0]} exists and is not a scaffold: not overwriting real weights",
            "scaffold into an empty folder",
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / UNTRAINED_MARKER).write_text(
        json.dumps(
            {
                "untrained": True,
                "files": names,
                "note": "random weights written by `lipsync weights scaffold-eval`; their metrics are noise",
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return [
        save_random_syncnet_v2(folder / SYNCNET_V2_FILE, seed),
        save_random_fid_inception(folder / FID_WEIGHTS_FILE, seed),
        save_random_arcface(folder / ARCFACE_FILE, arcface_variant, seed),
        save_random_alexnet(folder / ALEXNET_FILE, seed),
        save_random_lpips_linear(folder / LPIPS_LINEAR_FILE, seed),
    ]
