"""Micro-batching: concurrent requests share forward passes, and never each other's results.

Each request is split into units (one text, or one query-document pair) that
queue in arrival order, a pass's worth of tokens at a time: a request's second
pass's worth queues behind the first pass's worth of every request that came
after it, so a one-text request waits for one pass of a 2,048-text request, not
all of them. A worker takes units from the head of the queue into a batch whose
padded size (longest unit x count) stays within the token budget, sorts it by
length to cut padding (the head of the queue always goes), runs it on the
model's thread, and hands each result back to its own request by position.

How long a batch with room waits for company (at most ``max_wait_s``) depends on
what else is going on. It waits while requests answered lately have not come
back yet (closed-loop clients send the next one on an answer), while a burst of
new requests is still arriving, and while another pass runs (the cores are busy
anyway); then it takes the whole queue, within the budgets. This is what fills
passes when many clients send one text each. A lone request to an idle model
waits one 1 ms quiet gap, or not at all when it is the one expected back. One
worker forms a batch at a time, so two idle workers never split one burst.

A batch whose lengths differ so much that most of its padded tokens would be
padding runs as consecutive passes, one per length bucket (see
:func:`engine.padding.length_buckets`).

With ``workers`` > 1, that many batches run at once (the executor must have as
many threads): on a CPU, two passes with half the threads each keep the cores
busy while the event loop, which needs CPU too, serves HTTP.

A request whose client has gone (its task was cancelled) leaves its units in
the queue, and they are skipped before compute. Admission is bounded
(:mod:`engine.admission`): past ``max_queued_requests`` waiting or running requests,
:meth:`submit` raises :class:`~engine.errors.Overloaded` (429 + Retry-After) instead
of growing memory.
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

from engine.admission import Admission
from engine.padding import MIN_SPLIT_TOKENS, length_buckets
from engine.telemetry import SizeHistogram

__all__ = ["BatchStats", "MicroBatcher", "Unit"]

log = logging.getLogger(__name__)

# No new unit for this long while the model is idle: the burst is over, run the batch.
_QUIET_GAP_S = 0.001
# Requests expected back are waited for while they would grow the batch by at
# least 1 / this (in units): one straggler does not hold a batch of twenty.
_EXPECTED_SHARE = 8
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
    tokens_computed: int = 0
    # Longest unit x units, summed over passes: what the model computed, padding included.
    padded_tokens: int = 0


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
        min_split_tokens: int = MIN_SPLIT_TOKENS,
    ) -> None:
        self._name = name
        self._workers_wanted = workers
        self._run = run
        self._executor = executor
        self._max_tokens = max_batch_tokens
        self._max_items = max_batch_items
        self._max_wait = max_wait_s
        self._min_split_tokens = min_split_tokens
        self._queue: collections.deque[_Queued[P, R]] = collections.deque()
        self._arrivals = 0
        self._ready = asyncio.Event()
        # Set on every arrival and every pass's end: what a batch waiting for company waits on.
        self._changed = asyncio.Event()
        self._forming = asyncio.Lock()
        self._running = 0  # workers with a batch under way
        # When each request answered lately stops being expected back (oldest first).
        self._expected: collections.deque[float] = collections.deque()
        self._last_unexpected = float("-inf")  # the last arrival nobody was expected for
        self._workers: list[asyncio.Task[None]] = []
        self.stats = BatchStats()
        # Counted in ``stats`` (queued_requests, rejected_requests), as /health shows them.
        self._admission = Admission(max_queued_requests, f"the {name} queue", counts=self.stats)
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
        with self._admission.admit():
            if not units:
                return []
            future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
            request: _Request[R] = _Request(
                future=future, results=[None] * len(units), left=len(units)
            )
            self._enqueue(request, units)
            self._arrived(time.monotonic())
            self._ready.set()
            self._changed.set()
            # Cancelling the awaiting task cancels ``future``; the worker then skips its units.
            return await future

    def _arrived(self, now: float) -> None:
        """Count an arrival against the requests expected back, or as a new one."""
        expected = self._expected
        while expected and expected[0] <= now:
            expected.popleft()
        if expected:
            expected.popleft()
        else:
            self._last_unexpected = now

    def _answered(self) -> None:
        # Its client may send its next request on this answer: expect it back a while.
        self._expected.append(time.monotonic() + self._max_wait)

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
        while True:
            async with self._forming:
                passes = await self._form()
                # Counted before the next worker forms, so it knows the model is busy.
                self._running += 1
            try:
                for batch in passes:
                    await self._compute(batch)
            finally:
                self._running -= 1
                self._changed.set()

    async def _form(self) -> list[list[_Queued[P, R]]]:
        """The next batch, as the passes (length buckets) it runs in, longest first."""
        while True:
            await self._ready.wait()
            self._drop_departed_head()
            if self._queue:
                await self._gather_company()
                batch = self._take()
            else:
                batch = []
            if not self._queue:
                self._ready.clear()
            if batch:
                lengths = [queued.unit.tokens for queued in batch]
                return [
                    batch[bucket.start : bucket.stop]
                    for bucket in length_buckets(lengths, min_tokens=self._min_split_tokens)
                ]

    def _drop_departed_head(self) -> None:
        queue = self._queue
        while queue and queue[0].request.future.done():
            queue.popleft()
            self.stats.units_skipped += 1

    async def _gather_company(self) -> None:
        """Wait for more units while the batch has room and company is likely.

        Company is likely while requests a pass answered lately have not come back
        (closed-loop clients send their next request on an answer; each answer is
        expected back for ``max_wait_s``) and are not few next to the queue, while a
        burst of new requests is still arriving (one came within the last quiet gap),
        and while another pass runs
        (the cores are busy anyway, and its answers will bring requests back). A
        request that comes back as expected to an idle model goes at once; a lone
        new one waits one quiet gap. Either way a batch waits at most ``max_wait_s``.
        """
        now = time.monotonic()
        cap = now + self._max_wait
        while not self._batch_is_full() and now < cap:
            expected = self._expected
            while expected and expected[0] <= now:
                expected.popleft()
            if expected and len(expected) * _EXPECTED_SHARE >= len(self._queue):
                until = min(cap, expected[0])
            elif self._running:
                until = cap  # the model is busy anyway: company costs nothing
            else:
                until = min(cap, self._last_unexpected + _QUIET_GAP_S)
                if until <= now:
                    return  # nobody expected, no burst under way
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(until - now):
                    await self._changed.wait()
            now = time.monotonic()

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

    async def _compute(self, batch: list[_Queued[P, R]]) -> None:
        """One pass over ``batch`` (longest first); each result to its own request."""
        live = [queued for queued in batch if not queued.request.future.done()]
        self.stats.units_skipped += len(batch) - len(live)
        if not live:
            return
        tokens = sum(queued.unit.tokens for queued in live)
        padded = max(queued.unit.tokens for queued in live) * len(live)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: a pass of %d units, %d tokens (%d padded); %d queued, %d batches under way",
                self._name,
                len(live),
                tokens,
                padded,
                len(self._queue),
                self._running,
            )
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._executor, self._run, [queued.unit.payload for queued in live]
            )
        except Exception as exc:  # noqa: BLE001 - each request gets the failure, not the worker
            for queued in live:
                if not queued.request.future.done():
                    queued.request.future.set_exception(exc)
                    self._answered()
            return
        stats = self.stats
        stats.forward_passes += 1
        stats.units_computed += len(live)
        stats.largest_batch = max(stats.largest_batch, len(live))
        stats.tokens_computed += tokens
        stats.padded_tokens += padded
        self.batch_sizes.observe(len(live))
        for queued, result in zip(live, results, strict=True):
            request = queued.request
            if request.future.done():
                continue
            request.results[queued.position] = result
            request.left -= 1
            if request.left == 0:
                request.future.set_result(request.results)  # type: ignore[arg-type]
                self._answered()
