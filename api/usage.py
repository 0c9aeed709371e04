"""Token usage, reported the same way by every dialect."""

from __future__ import annotations

import msgspec

__all__ = ["Usage"]


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int
