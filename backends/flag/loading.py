"""A model's weights onto its device, with the attention kernel chosen and logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import transformers

from backends.flag.transfer import attention_for

__all__ = ["load_model"]

log = logging.getLogger(__name__)


def load_model(auto: Any, folder: Path, *, device: str, dtype: torch.dtype) -> Any:
    """``auto.from_pretrained`` (an ``AutoModel`` class) in ``dtype`` on ``device``, in
    eval mode, with :func:`attention_for`'s kernel; a model class that has no such kernel
    runs transformers' eager attention, and the log says which one runs."""
    # transformers 5 draws a "Loading weights" bar on stderr, which would break a log of
    # JSON lines (LOG_FORMAT=json); the log says what loads.
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    wanted = attention_for(device, dtype)
    try:
        model = auto.from_pretrained(folder, dtype=dtype, attn_implementation=wanted)
    except (ValueError, ImportError) as exc:
        log.warning("flag: %s has no %s attention (%s); running eager", folder, wanted, exc)
        model = auto.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    runs = getattr(model.config, "_attn_implementation", wanted)
    log.info("flag: %s runs %s attention in %s on %s", folder.name, runs, dtype, device)
    return model.to(device).eval()
