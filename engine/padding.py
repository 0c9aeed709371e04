"""Where a length-sorted batch is worth running as more than one pass.

A padded pass costs its longest row times its row count. One long text among
many short ones makes most of that padding; running the short ones as a pass
of their own costs one more pass's fixed overhead and saves the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

__all__ = ["MIN_SPLIT_TOKENS", "SPLIT_SAVING", "length_buckets"]

# A split has to save at least this share of the padded tokens of the part it splits...
SPLIT_SAVING = 0.25
# ...and at least this many tokens: a pass has a fixed cost too.
MIN_SPLIT_TOKENS = 512


def length_buckets(
    lengths: Sequence[int],
    *,
    min_saving: float = SPLIT_SAVING,
    min_tokens: int = MIN_SPLIT_TOKENS,
) -> list[range]:
    """Consecutive index ranges of ``lengths`` (longest first), one per pass.

    Each part is split at the point that saves the most padded tokens, as long as
    that saves ``min_saving`` of the part's padded size and ``min_tokens``; then
    each half is considered again. Lengths of similar size stay one pass.
    """
    if any(later > earlier for earlier, later in itertools.pairwise(lengths)):
        raise ValueError("lengths must be sorted longest first")
    buckets: list[range] = []
    pending = [range(len(lengths))] if lengths else []
    while pending:
        part = pending.pop()
        width = max(lengths[part.start], 1)
        best, saving = 0, 0
        for split in range(part.start + 1, part.stop):
            # The rows from ``split`` on, padded to their own longest instead of ``width``.
            saved = (part.stop - split) * (width - max(lengths[split], 1))
            if saved > saving:
                best, saving = split, saved
        if best and saving >= max(min_tokens, min_saving * width * len(part)):
            # The tail first onto the stack, so the head's part comes off next: passes
            # come out longest first, in order.
            pending += [range(best, part.stop), range(part.start, best)]
        else:
            buckets.append(part)
    return buckets
