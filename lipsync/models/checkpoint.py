"""Checkpoint files: read tensors safely, load them strictly, write them atomically.

Imports neither diffusers nor transformers, so metric networks, trainers and tests can use it alone.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lipsync.errors import WeightsError
from lipsync.io.files import atomic_path

MAX_LISTED_KEYS = 10


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a torch (zip or legacy) or safetensors file, on the CPU, without running pickled code."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path, device="cpu")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no mmap
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise WeightsError(f"cannot read {path}: {exc}", "download the file again") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a plain state dict of tensors", "download the file again")
    return state


def save_atomically(data: Any, path: Path, legacy_format: bool = False) -> Path:
    """torch.save to a temporary name beside `path`, then rename: a reader never sees half a file.
    `legacy_format` writes the pre-1.6 (non-zip) format that some released files use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(data, tmp, _use_new_zipfile_serialization=not legacy_format)
    return path


def listed_keys(keys: list[str]) -> str:
    more = f" ... and {len(keys) - MAX_LISTED_KEYS} more" if len(keys) > MAX_LISTED_KEYS else ""
    return ", ".join(keys[:MAX_LISTED_KEYS]) + more


BATCHNORM_COUNTER = "num_batches_tracked"
DEFAULT_MISMATCH_FIX = "the file and its config do not belong together: download both again from the source"


def load_strict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: Path,
    dtype: torch.dtype,
    fix: str = DEFAULT_MISMATCH_FIX,
    allow_missing_batchnorm_counters: bool = False,
) -> None:
    """Assign every tensor of `state` to the (meta-device) model; a missing, extra or misshapen key fails.

    Files saved before PyTorch 0.4.1 have no BatchNorm `num_batches_tracked` buffers; with
    `allow_missing_batchnorm_counters` those (and only those) are filled with 0, as PyTorch itself does.
    """
    expected = model.state_dict()
    if allow_missing_batchnorm_counters:
        state = dict(state)
        for key in expected:
            if key.endswith(BATCHNORM_COUNTER) and key not in state:
                state[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} ({len(keys)}): {listed_keys(keys)}"
        for label, keys in [("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)]
        if keys
    ]
    if problems:
        raise WeightsError(
            f"{source} does not match the {type(model).__name__} of its config:\n  " + "\n  ".join(problems),
            fix,
        )
    model.load_state_dict(
        {k: v if k.endswith(BATCHNORM_COUNTER) else v.to(dtype) for k, v in state.items()},
        strict=True,
        assign=True,
    )


def require_weights_file(path: Path, what: str, expected: str, fix: str) -> Path:
    """`path` if it is a file; else a WeightsError saying `what` (`expected`: which file) is missing."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} {path} do not exist (expected {expected})", fix)
    return path


M = TypeVar("M", bound=nn.Module)


def load_frozen(
    build: Callable[[], M], state: dict[str, torch.Tensor], source: Path, device: torch.device | str, fix: str
) -> M:
    """A network built on the meta device, every tensor of `state` assigned strictly (absent BatchNorm
    counters of old files filled), frozen in float32 eval mode on `device`."""
    with torch.device("meta"):
        model = build()
    load_strict(model, state, source, torch.float32, fix=fix, allow_missing_batchnorm_counters=True)
    model.requires_grad_(False)
    return model.to(device).eval()
