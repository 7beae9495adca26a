"""Choosing the device and the numeric precision the networks run in."""

from __future__ import annotations

import torch

from lipsync.config import DeviceChoice, DtypeChoice
from lipsync.errors import LipsyncError

_DTYPES: dict[DtypeChoice, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def dtype_label(dtype: torch.dtype) -> str:
    """The `dtype` setting name of a torch dtype (fp32, bf16, fp16), or its torch name for any other."""
    return next((label for label, known in _DTYPES.items() if known == dtype), str(dtype))


def resolve_device(choice: DeviceChoice) -> torch.device:
    """auto: CUDA when available, else the CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise LipsyncError(
            "`device` cuda was asked for, but this PyTorch build sees no CUDA GPU",
            "set `device` to cpu (or auto), or install a CUDA build of PyTorch and an NVIDIA driver",
        )
    return torch.device(choice)


def image_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on the CPU, where oneDNN convolutions run ~10-15% faster in it; default elsewhere.

    The image networks (UNet, VAE) and their inputs must agree, so this is the one place that decides.
    """
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bfloat16 kernels (AVX512-BF16 or AMX) on this CPU."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(choice: DtypeChoice, device: torch.device) -> torch.dtype:
    """auto: float16 on CUDA; on the CPU bfloat16 where it is fast, else float32."""
    if choice == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if choice == "fp16" and device.type == "cpu":
        raise LipsyncError(
            "`dtype` fp16 is not supported on the CPU (slow and unsupported in several kernels)",
            "set `dtype` to bf16 or fp32 on the CPU (or auto), or run on a CUDA GPU",
        )
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LipsyncError(
            "`dtype` bf16 is not supported by this GPU",
            "set `dtype` to fp16 (or auto) on this GPU",
        )
    return _DTYPES[choice]
