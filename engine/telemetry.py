"""Counts the engine keeps about its own work, for whatever exports them (``/metrics``).

Plain numbers, no metrics library: the engine stays free of the export format, and
reading them costs nothing on the request path.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from engine.types import Operation

__all__ = ["BATCH_SIZE_BOUNDS", "SizeHistogram", "Telemetry"]

BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(slots=True)
class SizeHistogram:
    """How many observations fell at or under each bound (the last slot: above them all)."""

    bounds: tuple[int, ...] = BATCH_SIZE_BOUNDS
    counts: list[int] = field(default_factory=lambda: [0] * (len(BATCH_SIZE_BOUNDS) + 1))
    total: int = 0  # the sum of the observed sizes

    def observe(self, size: int) -> None:
        self.counts[bisect.bisect_left(self.bounds, size)] += 1
        self.total += size

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or under it), ending with "+Inf": Prometheus's form."""
        running = 0
        buckets = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


@dataclass(slots=True)
class Telemetry:
    items: Counter[Operation] = field(default_factory=Counter)  # texts, documents, pairs
    tokens: Counter[Operation] = field(default_factory=Counter)
    # (backend, error kind): calls a backend failed or refused
    backend_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (operation, backend): calls that went past this backend to the next in the chain
    fall_throughs: Counter[tuple[Operation, str]] = field(default_factory=Counter)
    load_seconds: dict[str, float] = field(default_factory=dict)  # per backend
