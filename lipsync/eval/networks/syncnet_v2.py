"""SyncNet v2 (Chung & Zisserman 2016), the network of joonson/syncnet_python used for LSE-D / LSE-C.

The layout reproduces the reference model `S` module by module, including the parameter-free ReLU and
MaxPool layers, so the `Sequential` indices, and with them the key names of the released
`syncnet_v2.model` (e.g. `netcnnlip.0.weight`, `netcnnaud.1.running_mean`), match and the file loads
strictly. The file is a plain state dict saved by an old PyTorch, without BatchNorm
`num_batches_tracked` buffers; those are filled on load.

Inputs, as in the reference: lip windows (N, 3, 5, 224, 224) of BGR pixel values 0..255 as floats (no
normalisation), audio windows (N, 1, 13, 20) of MFCCs (13 coefficients x 20 columns at 100 Hz, 0.2 s).
Both branches end in a 1024-d embedding; the distance between the two measures how well they agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from lipsync.models.checkpoint import (
    BATCHNORM_COUNTER,
    load_frozen,
    read_state_dict,
    require_weights_file,
    save_atomically,
)

SYNCNET_V2_FILE = "syncnet_v2.model"
SYNCNET_V2_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
SYNCNET_V2_SOURCE = "joonson/syncnet_python, download_model.sh"
SYNCNET_V2_IMAGE_SIZE = 224
SYNCNET_V2_FRAMES = 5
SYNCNET_V2_MFCC_COEFFICIENTS = 13
SYNCNET_V2_MFCC_COLUMNS = 20
SYNCNET_V2_EMBED_DIM = 1024
SYNCNET_V2_CHANNELS = 3  # BGR
SYNCNET_V2_FEATURES = 512  # the width at the end of both conv stacks and inside the fc heads

# Random weights (save_random_syncnet_v2): BatchNorm statistics are measured on one batch of this size.
CALIBRATION_BATCH = 2
PIXEL_MAX = 255.0
CALIBRATION_MFCC_SCALE = 10.0  # MFCCs of 16-bit speech are of order 10

LOAD_FIX = (
    f"use the original {SYNCNET_V2_FILE} ({SYNCNET_V2_URL}, from {SYNCNET_V2_SOURCE}); download it again"
)


class SyncEmbedder(Protocol):
    """What the LSE scoring needs of a sync network: lip and audio windows to embeddings."""

    def forward_lip(self, x: Tensor) -> Tensor:
        """(N, 3, 5, 224, 224) BGR 0..255 -> (N, D)."""
        ...

    def forward_aud(self, x: Tensor) -> Tensor:
        """(N, 1, 13, 20) MFCC -> (N, D)."""
        ...


def _fc_head() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(SYNCNET_V2_FEATURES, SYNCNET_V2_FEATURES),
        nn.BatchNorm1d(SYNCNET_V2_FEATURES),
        nn.ReLU(),
        nn.Linear(SYNCNET_V2_FEATURES, SYNCNET_V2_EMBED_DIM),
    )


class SyncNetV2(nn.Module):
    """The reference `S`: an MFCC branch (Conv2d) and a lip branch (Conv3d), each with an fc head.

    Attributes are registered in the reference order (netcnnaud, netfcaud, netfclip, netcnnlip).
    """

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),  # 0
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),  # 3: identity, kept for the indices
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),  # 4
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),  # 7: 13 x 20 -> 11 x 9
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),  # 8
            nn.BatchNorm2d(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),  # 11
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),  # 14
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),  # 17: 11 x 9 -> 5 x 4
            nn.Conv2d(256, SYNCNET_V2_FEATURES, kernel_size=(5, 4), padding=(0, 0)),  # 18: -> 1 x 1
            nn.BatchNorm2d(SYNCNET_V2_FEATURES),
            nn.ReLU(),
        )
        self.netfcaud = _fc_head()
        self.netfclip = _fc_head()
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(SYNCNET_V2_CHANNELS, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),  # 0
            nn.BatchNorm3d(96),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 3: 109 -> 54
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),  # 4: -> 26
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # 7: -> 13
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),  # 8
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),  # 11
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),  # 14
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 17: -> 6
            nn.Conv3d(256, SYNCNET_V2_FEATURES, kernel_size=(1, 6, 6), padding=0),  # 18: -> 1 x 1 x 1
            nn.BatchNorm3d(SYNCNET_V2_FEATURES),
            nn.ReLU(inplace=True),
        )

    def forward_aud(self, x: Tensor) -> Tensor:
        """(N, 1, 13, 20) MFCC windows -> (N, 1024)."""
        mid = self.netcnnaud(x)
        return self.netfcaud(mid.reshape(mid.shape[0], -1))

    def forward_lip(self, x: Tensor) -> Tensor:
        """(N, 3, 5, 224, 224) BGR 0..255 windows -> (N, 1024)."""
        mid = self.netcnnlip(x)
        return self.netfclip(mid.reshape(mid.shape[0], -1))


def load_syncnet_v2(path: Path, device: torch.device | str = "cpu") -> SyncNetV2:
    """Strictly load `syncnet_v2.model` (float32, eval mode, on `device`).

    A missing, extra or misshapen key is a WeightsError naming it; absent BatchNorm counters are filled.
    """
    path = require_weights_file(
        path,
        "the SyncNet v2 weights",
        "the file " + SYNCNET_V2_FILE,
        f"download {SYNCNET_V2_FILE} from {SYNCNET_V2_URL} (see {SYNCNET_V2_SOURCE}) and give its path",
    )
    return load_frozen(SyncNetV2, read_state_dict(path), path, device, LOAD_FIX)


def _calibrate_batchnorm(model: SyncNetV2, generator: torch.Generator) -> None:
    """Set every BatchNorm's running statistics to those of one random batch, so eval outputs stay O(1)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    size = SYNCNET_V2_IMAGE_SIZE
    lips = torch.rand(
        (CALIBRATION_BATCH, SYNCNET_V2_CHANNELS, SYNCNET_V2_FRAMES, size, size), generator=generator
    )
    mfcc = torch.randn(
        (CALIBRATION_BATCH, 1, SYNCNET_V2_MFCC_COEFFICIENTS, SYNCNET_V2_MFCC_COLUMNS), generator=generator
    )
    model.train()
    with torch.no_grad():
        model.forward_lip(lips * PIXEL_MAX)
        model.forward_aud(mfcc * CALIBRATION_MFCC_SCALE)
    model.eval()


def save_random_syncnet_v2(path: Path, seed: int = 0) -> Path:
    """Write randomly initialised weights in the layout of the released `syncnet_v2.model`.

    Same keys and shapes, a plain state dict in the legacy (pre-1.6) torch format and without
    `num_batches_tracked`, like the real file; BatchNorm statistics are measured on random inputs so the
    outputs are finite and of order 1. For tests and scaffolding only: it measures nothing.
    """
    path = Path(path)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SyncNetV2()
    _calibrate_batchnorm(model, generator)
    state = {
        k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(BATCHNORM_COUNTER)
    }
    return save_atomically(state, path, legacy_format=True)
