"""Device and dtype resolution shared by every tensor path (``auto`` picks CUDA when present)."""

from __future__ import annotations

import torch

from lorahive.hub.errors import InvalidRequestError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidRequestError("device cuda was asked for but no CUDA device is available",
                                  params="device")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InvalidRequestError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise InvalidRequestError(
            f"unknown dtype {dtype!r}; use one of {', '.join(sorted(set(DTYPES)))}"
        ) from None
