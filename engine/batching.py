"""Micro-batching: concurrent requests share forward passes, and never each other's results.

Each request is split into units (one text, or one query-document pair) that
queue in arrival order. One worker per model takes units from the head of the
queue into a batch whose padded size (longest unit x count) stays within the
token budget - waiting up to ``max_wait_s`` for company while the batch has
room - sorts it by length to cut padding, runs it on the model's thread, and
hands each result back to its own request by position.

A request whose client has gone (its task was cancelled) leaves its units in
the queue, and they are skipped before compute. Admission is bounded: past
``max_queued_requests`` waiting or running requests, :meth:`submit` raises
:class:`~engine.errors.Overloaded` (429 + Retry-After) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from engine.errors import Overloaded

__all__ = ["BatchStats", "MicroBatcher", "Unit"]

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Unit(Generic[P]):
    payload: P
    tokens: int


@dataclass(slots=True, eq=False)
class _Request(Generic[R]):
    future: asyncio.Future[list[R]]
    results: list[R | None]
    left: int


@dataclass(slots=True, eq=False)
class _Queued(Generic[P, R]):
    unit: Unit[P]
    request: _Request[R]
    position: int


@dataclass(slots=True)
class BatchStats:
    forward_passes: int = 0
    units_computed: int = 0
    units_skipped: int = 0
    rejected_requests: int = 0
    largest_batch: int = 0
    queued_requests: int = field(default=0)


class MicroBatcher(Generic[P, R]):
    def __init__(
        self,
        name: str,
        run: Callable[[list[P]], list[R]],
        *,
        executor: Executor,
        max_batch_tokens: int,
        max_batch_items: int,
        max_wait_s: float,
        max_queued_requests: int,
    ) -> None:
        self._name = name
        self._run = run
        self._executor = executor
        self._max_tokens = max_batch_tokens
        self._max_items = max_batch_items
        self._max_wait = max_wait_s
        self._max_requests = max_queued_requests
        self._queue: collections.deque[_Queued[P, R]] = collections.deque()
        self._ready = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name=f"batcher-{self._name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for queued in self._queue:
            if not queued.request.future.done():
                queued.request.future.cancel()
        self._queue.clear()

    async def submit(self, units: Sequence[Unit[P]]) -> list[R]:
        """Results in the order of ``units``; raises Overloaded when the queue is full."""
        if self.stats.queued_requests >= self._max_requests:
            self.stats.rejected_requests += 1
            raise Overloaded(
                f"the {self._name} queue is full ({self._max_requests} requests waiting; "
                "MAX_QUEUED_REQUESTS); retry shortly",
                retry_after=1,
            )
        if not units:
            return []
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        request: _Request[R] = _Request(future=future, results=[None] * len(units), left=len(units))
        self._queue.extend(_Queued(unit, request, i) for i, unit in enumerate(units))
        self.stats.queued_requests += 1
        self._ready.set()
        try:
            # Cancelling the awaiting task cancels ``future``; the worker then skips its units.
            return await future
        finally:
            self.stats.queued_requests -= 1

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            if self._max_wait > 0 and not self._batch_is_full():
                await asyncio.sleep(self._max_wait)
            batch = self._take()
            if not self._queue:
                self._ready.clear()
            if not batch:
                continue
            batch.sort(key=lambda queued: queued.unit.tokens, reverse=True)
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run, [queued.unit.payload for queued in batch]
                )
            except Exception as exc:  # noqa: BLE001 - each request gets the failure, not the worker
                for queued in batch:
                    if not queued.request.future.done():
                        queued.request.future.set_exception(exc)
                continue
            self.stats.forward_passes += 1
            self.stats.units_computed += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for queued, result in zip(batch, results, strict=True):
                request = queued.request
                if request.future.done():
                    continue
                request.results[queued.position] = result
                request.left -= 1
                if request.left == 0:
                    request.future.set_result(request.results)  # type: ignore[arg-type]

    def _batch_is_full(self) -> bool:
        width = 0
        for count, queued in enumerate(self._queue, start=1):
            width = max(width, queued.unit.tokens)
            if count >= self._max_items or width * count >= self._max_tokens:
                return True
        return False

    def _take(self) -> list[_Queued[P, R]]:
        batch: list[_Queued[P, R]] = []
        width = 0
        queue = self._queue
        while queue:
            head = queue[0]
            if head.request.future.done():  # client gone, or a sibling unit failed
                queue.popleft()
                self.stats.units_skipped += 1
                continue
            wider = max(width, head.unit.tokens)
            full = len(batch) >= self._max_items or wider * (len(batch) + 1) > self._max_tokens
            if batch and full:
                break
            batch.append(queue.popleft())
            width = wider
        return batch
