"""A pass's answers off the device in one copy, and the attention kernel a model runs."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["attention_for", "to_host"]


def to_host(
    tensors: Sequence[torch.Tensor | None], *, one_copy: bool | None = None
) -> list[NDArray[np.float32] | None]:
    """Each tensor as float32 numpy, in order (None stays None).

    On a GPU (``one_copy`` unset) every head of a pass comes back in one device-to-host
    copy, the pass's one synchronisation, instead of one per head; on a CPU the arrays
    are the tensors' own memory (no copy at all).
    """
    present = [t.float() for t in tensors if t is not None]
    if one_copy is None:
        one_copy = bool(present) and present[0].device.type != "cpu"
    if one_copy:
        flat = torch.cat([t.reshape(-1) for t in present]).cpu().numpy()
        arrays: list[NDArray[np.float32]] = []
        start = 0
        for t in present:
            arrays.append(flat[start : start + t.numel()].reshape(t.shape))
            start += t.numel()
    else:
        arrays = [t.numpy() for t in present]
    answers = iter(arrays)
    return [None if t is None else next(answers) for t in tensors]


def attention_for(device: str, dtype: torch.dtype) -> str:
    """transformers' ``attn_implementation``: flash-attention 2 on a GPU in half precision
    where it is installed (it packs a pass's rows without padding: varlen kernels on the
    real tokens only), else torch's scaled-dot-product attention (fused kernels on CPU and
    GPU alike)."""
    half = dtype in (torch.float16, torch.bfloat16)
    if device.startswith("cuda") and half and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"
