"""Micro-batching: concurrent requests share forward passes, and never each other's results.

Each request is split into units (one text, or one query-document pair) that
queue in arrival order, a pass's worth of tokens at a time: a request's second
pass's worth queues behind the first pass's worth of every request that came
after it, so a one-text request waits for one pass of a 2,048-text request, not
all of them. One worker per model takes units from the head of the queue into a
batch whose padded size (longest unit x count) stays within the token budget -
waiting up to ``max_wait_s`` for company while the batch has room - sorts it by
length to cut padding (the head of the queue always goes), runs it on the
model's thread, and hands each result back to its own request by position.

With ``workers`` > 1, that many batches run at once (the executor must have as
many threads): on a CPU, two passes with half the threads each keep the cores
busy while the event loop, which needs CPU too, serves HTTP.

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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from engine.errors import Overloaded
from engine.telemetry import SizeHistogram

__all__ = ["BatchStats", "MicroBatcher", "Unit"]

log = logging.getLogger(__name__)

# No new unit for this long: the burst is over, run the batch.
_QUIET_GAP_S = 0.001
# How many batches deep the queue is looked at when choosing what to run next.
_WINDOW_BATCHES = 4

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
    # Where it queues: its request's pass's worth (round), then arrival.
    order: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class BatchStats:
    forward_passes: int = 0
    units_computed: int = 0
    units_skipped: int = 0
    rejected_requests: int = 0
    largest_batch: int = 0
    queued_requests: int = 0


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
        workers: int = 1,
    ) -> None:
        self._name = name
        self._workers_wanted = workers
        self._run = run
        self._executor = executor
        self._max_tokens = max_batch_tokens
        self._max_items = max_batch_items
        self._max_wait = max_wait_s
        self._max_requests = max_queued_requests
        self._queue: collections.deque[_Queued[P, R]] = collections.deque()
        self._arrivals = 0
        self._ready = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self.stats = BatchStats()
        self.batch_sizes = SizeHistogram()

    def start(self) -> None:
        # More than one worker only helps if ``executor`` runs as many passes at once.
        self._workers = [
            asyncio.create_task(self._work(), name=f"batcher-{self._name}-{i}")
            for i in range(self._workers_wanted)
        ]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
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
        self._enqueue(request, units)
        self.stats.queued_requests += 1
        self._ready.set()
        try:
            # Cancelling the awaiting task cancels ``future``; the worker then skips its units.
            return await future
        finally:
            self.stats.queued_requests -= 1

    def _enqueue(self, request: _Request[R], units: Sequence[Unit[P]]) -> None:
        """``units`` into the queue by (round, arrival): round k holds the units after
        the request's first k passes' worth of tokens."""
        queued: list[_Queued[P, R]] = []
        tokens = 0
        for position, unit in enumerate(units):
            self._arrivals += 1
            queued.append(
                _Queued(unit, request, position, (tokens // self._max_tokens, self._arrivals))
            )
            tokens += max(unit.tokens, 1)
        queue = self._queue
        if not queue or queued[0].order[0] >= queue[-1].order[0]:
            queue.extend(queued)  # no unit queued in a later round: in order as it is
        else:
            self._queue = collections.deque(sorted([*queue, *queued], key=lambda item: item.order))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            await self._gather_company()
            batch = self._take()
            if not self._queue:
                self._ready.clear()
            if not batch:
                continue
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
            self.batch_sizes.observe(len(batch))
            for queued, result in zip(batch, results, strict=True):
                request = queued.request
                if request.future.done():
                    continue
                request.results[queued.position] = result
                request.left -= 1
                if request.left == 0:
                    request.future.set_result(request.results)  # type: ignore[arg-type]

    async def _gather_company(self) -> None:
        """Wait while requests keep arriving, up to ``max_wait_s``, unless the batch is full.

        Closed-loop clients come back in a burst when a batch's answers go out;
        waiting out the burst (not a fixed delay) lets them share the next pass,
        while a lone request waits only one quiet gap.
        """
        deadline = time.monotonic() + self._max_wait
        while not self._batch_is_full() and time.monotonic() < deadline:
            queued = len(self._queue)
            await asyncio.sleep(min(_QUIET_GAP_S, max(deadline - time.monotonic(), 0)))
            if len(self._queue) == queued:
                return

    def _batch_is_full(self) -> bool:
        width = 0
        for count, queued in enumerate(self._queue, start=1):
            width = max(width, queued.unit.tokens)
            if count >= self._max_items or width * count >= self._max_tokens:
                return True
        return False

    def _take(self) -> list[_Queued[P, R]]:
        """The next batch: from a window at the head of the queue, longest units first.

        Sorting a window (not only the batch) groups similar lengths, so little of a
        pass is padding; the window is a few batches deep, so no unit waits long.
        """
        window: list[_Queued[P, R]] = []
        queue = self._queue
        while queue and len(window) < _WINDOW_BATCHES * self._max_items:
            head = queue.popleft()
            if head.request.future.done():  # client gone, or a sibling unit failed
                self.stats.units_skipped += 1
                continue
            window.append(head)
        if not window:
            return []
        # The head always goes, so no unit waits behind longer ones that keep arriving.
        head, by_length = window[0], sorted(window[1:], key=lambda q: q.unit.tokens, reverse=True)
        widest = max(head.unit.tokens, by_length[0].unit.tokens if by_length else 0, 1)
        fits = max(1, self._max_tokens // widest)
        batch = sorted(
            [head, *by_length[: min(fits, self._max_items) - 1]],
            key=lambda q: q.unit.tokens,
            reverse=True,
        )
        taken = {id(queued) for queued in batch}
        # The rest go back to the head of the queue, in arrival order.
        queue.extendleft(reversed([queued for queued in window if id(queued) not in taken]))
        return batch
