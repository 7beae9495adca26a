"""Random weights in a real file layout, for tests and demos: never for use (outputs are noise).

Each family's scaffold draws its tensors here, LeCun-scaled so activations stay O(1) through the random
network, and marks its folder untrained in lipsync.json.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

# Full-size scaffolds slice noise from a pool: drawing 850 M normal samples takes ~10 s, twice as long.
_NOISE_POOL_SIZE = 1 << 24
_SMALL_TENSOR = 1 << 16
FRESH_BATCHNORM_BUFFERS = {"running_mean": 0.0, "running_var": 1.0}


class Noise:
    """Normal noise: exact draws for small tensors, slices of a shared pool for big ones (speed)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(_NOISE_POOL_SIZE, generator=self.generator)

    def fill(self, out: torch.Tensor, std: float, mean: float) -> None:
        """Fill a flat tensor with normal noise of this std and mean."""
        numel = out.numel()
        if numel <= _SMALL_TENSOR:
            values = torch.randn(numel, generator=self.generator)
        elif numel > _NOISE_POOL_SIZE:
            values = self.pool.repeat(math.ceil(numel / _NOISE_POOL_SIZE))[:numel]
        else:
            offset = int(torch.randint(_NOISE_POOL_SIZE - numel + 1, (1,), generator=self.generator))
            values = self.pool[offset : offset + numel]
        torch.mul(values, std, out=out)
        if mean:
            out.add_(mean)


def random_state_dict(module: nn.Module, noise: Noise) -> dict[str, torch.Tensor]:
    """Random float32 tensors for every entry of module's state dict (which may live on the meta device);
    BatchNorm statistics are those of a fresh network (mean 0, variance 1, no batches tracked)."""
    state: dict[str, torch.Tensor] = {}
    for name, ref in module.state_dict().items():
        buffer = name.rsplit(".", 1)[-1]
        if buffer in FRESH_BATCHNORM_BUFFERS:
            state[name] = torch.full(ref.shape, FRESH_BATCHNORM_BUFFERS[buffer])
            continue
        if buffer == "num_batches_tracked":
            state[name] = torch.zeros((), dtype=torch.long)
            continue
        if ref.dim() > 1:  # LeCun-scaled, so activations stay O(1) through the random network
            std, mean = 1.0 / math.sqrt(math.prod(ref.shape[1:])), 0.0
        else:  # norm scales near 1, biases near 0
            std, mean = 0.02, (1.0 if name.endswith("weight") else 0.0)
        state[name] = torch.empty(ref.shape)
        noise.fill(state[name].view(-1), std, mean)
    return state


def write_random_safetensors(networks: dict[Path, nn.Module], noise: Noise) -> None:
    """Each network's random state dict (`random_state_dict`) to its safetensors file."""
    from safetensors.torch import save_file

    for path, network in networks.items():
        save_file(random_state_dict(network, noise), str(path))
