"""Full-size scaffolded v1.0 and v1.5 folders load with every tensor matched (real layouts and sizes)."""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lipsync.models.musetalk.loading import load_models
from lipsync.models.musetalk.weights import check_weights, scaffold_weights

# Writing and loading 7 GB of scaffolded weights takes most of a minute: a long run, `make test-slow`.
pytestmark = pytest.mark.slow

FULL_SCAFFOLD_BYTES = 7_500_000_000  # two 3.4 GB UNets, the VAE and whisper, with some headroom


@pytest.fixture(scope="module")
def full_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("full-weights")
    free = shutil.disk_usage(root).free
    if free < FULL_SCAFFOLD_BYTES:
        pytest.skip(f"needs {FULL_SCAFFOLD_BYTES / 1e9:.1f} GB free in {root}, has {free / 1e9:.1f} GB")
    scaffold_weights(root)  # both versions share one folder (and one VAE and whisper)
    yield root
    shutil.rmtree(root)  # 7 GB: do not leave it to pytest's keep-the-last-3-runs cleanup


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("version", "dtype"), [("v1", torch.float32), ("v15", torch.bfloat16)])
def test_full_size_models_load_strictly(full_weights: Path, version: str, dtype: torch.dtype) -> None:
    assert check_weights(full_weights).ok
    models = load_models(full_weights, version, torch.device("cpu"), dtype)  # type: ignore[arg-type]
    try:
        # load_models is strict: reaching here means no missing, unexpected or misshapen tensor
        assert 0.84e9 <= count(models.unet) <= 0.86e9
        assert 83e6 <= count(models.vae) <= 84e6  # sd-vae-ft-mse: 83.65 M
        assert 8e6 <= count(models.audio_encoder) <= 8.5e6  # whisper-tiny encoder: 8.2 M
        for module in (models.unet, models.vae, models.audio_encoder):
            assert not any(t.is_meta for t in module.state_dict().values())
        assert models.unet.conv_in.weight.dtype == dtype
    finally:
        del models
        gc.collect()
