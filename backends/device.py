"""Which torch device and dtype a backend runs on."""

from __future__ import annotations

from typing import Literal

import torch

from engine.errors import StartupError

__all__ = ["resolve_device", "resolve_dtype"]


def resolve_device(setting: Literal["auto", "cuda", "cpu"]) -> str:
    """``auto`` is cuda when torch sees a GPU (NVIDIA, or AMD through a ROCm build), else cpu."""
    available = torch.cuda.is_available()
    if setting == "cuda" and not available:
        raise StartupError("DEVICE=cuda but torch sees no GPU (is this a CUDA or ROCm build?)")
    if setting == "auto":
        return "cuda" if available else "cpu"
    return setting


def resolve_dtype(device: str, use_fp16: bool) -> torch.dtype:
    # fp16 matmuls on CPU are slow and inexact: half precision only on a GPU.
    return torch.float16 if use_fp16 and device.startswith("cuda") else torch.float32
