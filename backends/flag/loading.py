"""A model's weights onto its device, with the attention kernel chosen and logged."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from backends.flag.packing import PACKED_ATTENTION, can_pack, register_packed_attention
from backends.flag.transfer import attention_for

__all__ = ["load_model", "runs_packed"]

log = logging.getLogger(__name__)


def load_model(
    auto: Any,
    folder: Path,
    *,
    device: str,
    dtype: torch.dtype,
    compile_model: bool = False,
    packed: bool = False,
) -> Any:
    """``auto.from_pretrained`` (an ``AutoModel`` class) in ``dtype`` on ``device``, in
    eval mode, with :func:`attention_for`'s kernel; a model class that has no such kernel
    runs transformers' eager attention, and the log says which one runs.

    ``packed`` (PACKED_PASSES): where the kernel would be SDPA and the model can take
    packed passes (:func:`backends.flag.packing.can_pack`), it is loaded with the packed
    attention, which is SDPA for a padded pass; :func:`runs_packed` tells which it got.

    ``compile_model`` (TORCH_COMPILE): ``torch.compile`` with dynamic shapes, compiled here
    by one small pass so the first request does not pay for it; later batch sizes and
    lengths reuse the compiled graph."""
    # transformers 5 draws a "Loading weights" bar on stderr, which would break a log of
    # JSON lines (LOG_FORMAT=json); the log says what loads.
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    wanted = attention_for(device, dtype)
    if packed and not compile_model and wanted == "sdpa":
        config = transformers.AutoConfig.from_pretrained(folder)
        if can_pack(config):
            register_packed_attention()
            wanted = PACKED_ATTENTION
    try:
        model = auto.from_pretrained(folder, dtype=dtype, attn_implementation=wanted)
    except (ValueError, ImportError) as exc:
        log.warning("flag: %s has no %s attention (%s); running eager", folder, wanted, exc)
        model = auto.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    runs = getattr(model.config, "_attn_implementation", wanted)
    log.info(
        "flag: %s runs %s attention in %s on %s%s",
        folder.name,
        "sdpa" if runs == PACKED_ATTENTION else runs,
        dtype,
        device,
        ", packed passes (no padding)" if runs == PACKED_ATTENTION else "",
    )
    model = model.to(device).eval()
    if not compile_model:
        return model
    started = time.perf_counter()
    compiled = torch.compile(model, dynamic=True)
    # Two rows of eight: a size of 1 would be specialised, not dynamic.
    ids = torch.full((2, 8), 5, dtype=torch.long, device=device)
    with torch.inference_mode():
        compiled(input_ids=ids, attention_mask=torch.ones_like(ids))  # type: ignore[no-untyped-call]
    log.info(
        "flag: %s compiled in %.1f s (TORCH_COMPILE)", folder.name, time.perf_counter() - started
    )
    return compiled


def runs_packed(model: Any) -> bool:
    """Whether ``load_model`` gave ``model`` the packed attention."""
    return getattr(model.config, "_attn_implementation", None) == PACKED_ATTENTION
