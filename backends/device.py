"""Which torch device and dtype a backend runs on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch

from engine.errors import StartupError
from engine.settings import ModelDtype

__all__ = ["cpu_flags", "cpu_has_bf16", "dtype_name", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# x86 flags (Linux /proc/cpuinfo) for bf16 arithmetic in hardware: AVX512-BF16 (Intel Cooper
# Lake and later, AMD Zen 4 and later) and AMX-BF16 (Intel Sapphire Rapids and later), which
# oneDNN, torch's CPU matmul library, uses for bf16 matmuls. Without them torch emulates bf16
# and it is slower than float32.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def resolve_device(setting: Literal["auto", "cuda", "cpu"]) -> str:
    """``auto`` is cuda when torch sees a GPU (NVIDIA, or AMD through a ROCm build), else cpu."""
    available = torch.cuda.is_available()
    if setting == "cuda" and not available:
        raise StartupError("DEVICE=cuda but torch sees no GPU (is this a CUDA or ROCm build?)")
    if setting == "auto":
        return "cuda" if available else "cpu"
    return setting


def resolve_dtype(
    device: str, setting: ModelDtype, flags: frozenset[str] | None = None
) -> torch.dtype:
    """The dtype the model weights and forward passes run in (outputs are float32 always).

    ``auto``: float16 on a GPU (NVIDIA or ROCm: every one torch supports has fast fp16);
    bfloat16 on a CPU whose instructions compute it (``flags``, read from /proc/cpuinfo when
    not given); float32 on any other CPU.
    """
    on_gpu = device.startswith("cuda")
    bf16_cpu = not on_gpu and cpu_has_bf16(cpu_flags() if flags is None else flags)
    if setting == "auto":
        if on_gpu:
            return torch.float16
        return torch.bfloat16 if bf16_cpu else torch.float32
    if setting == "bfloat16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise StartupError(
            "DTYPE=bfloat16 but this GPU has no bfloat16 arithmetic; use DTYPE=float16 or auto"
        )
    if setting == "float16" and not on_gpu:
        log.warning(
            "DTYPE=float16 on a CPU: torch computes fp16 slowly there; auto picks "
            "bfloat16 where the CPU has it, float32 otherwise"
        )
    if setting == "bfloat16" and not on_gpu and not bf16_cpu:
        log.warning(
            "DTYPE=bfloat16 on a CPU without AVX512-BF16 or AMX: torch emulates it, "
            "slower than float32"
        )
    return _DTYPES[setting]


def dtype_name(dtype: torch.dtype) -> str:
    """``float32``, ``float16`` or ``bfloat16``: the name the settings and /info use."""
    return str(dtype).removeprefix("torch.")


def cpu_has_bf16(flags: frozenset[str]) -> bool:
    return not _BF16_FLAGS.isdisjoint(flags)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags; empty where there is no /proc/cpuinfo (macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()
