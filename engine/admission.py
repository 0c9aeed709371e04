"""Admission: the one rule by which every backend sheds load.

At most ``limit`` requests are admitted at once, waiting or running; one more is
refused at once with Overloaded (429 + Retry-After) rather than made to wait:
memory stays bounded, the router falls through to the next backend of the
chain, and the client is told when to come back. The micro-batcher (one
admission per model), the infinity backend and the remote backend (one per
remote URL) all admit through it, each with MAX_QUEUED_REQUESTS, as TEI takes
its permits (``try_acquire_permit``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from engine.errors import Overloaded

__all__ = ["Admission", "AdmissionCounts", "Admitted"]


class AdmissionCounts(Protocol):
    """Where an admission keeps its counts: a backend's own stats, or ``Admitted``."""

    queued_requests: int  # admitted now: waiting or running
    rejected_requests: int  # refused since start-up


@dataclass(slots=True)
class Admitted:
    queued_requests: int = 0
    rejected_requests: int = 0


class Admission:
    def __init__(self, limit: int, name: str, *, counts: AdmissionCounts | None = None) -> None:
        self.limit = limit
        self.name = name  # what is full, as the refusal names it: "the remote http://tei"
        self.counts: AdmissionCounts = Admitted() if counts is None else counts

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one place while the block runs; Overloaded when every place is taken."""
        counts = self.counts
        if counts.queued_requests >= self.limit:
            counts.rejected_requests += 1
            raise Overloaded(
                f"{self.name} is full ({self.limit} requests waiting or running; "
                "MAX_QUEUED_REQUESTS); retry shortly",
                retry_after=1,
            )
        counts.queued_requests += 1
        try:
            yield
        finally:
            counts.queued_requests -= 1
