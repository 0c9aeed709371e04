"""The model's threads: a pass runs on the first free one, in a fixed order.

With two passes at once on a CPU (see :func:`model_workers`), a
``ThreadPoolExecutor(2)`` hands each pass to whichever idle thread wakes first, so
consecutive lone passes alternate between threads. Each calling thread has its own
OpenMP team and its own oneDNN scratch state; a pass on the thread that did not run
the last one wakes a cold team and measured 14 ms for one text against 8 ms on the
thread that ran the last pass (all-MiniLM-L6-v2, bf16, 2 cores). Here a pass goes to
the lowest-numbered idle thread, so a lone request always finds the warm one and the
second thread only runs while the first is busy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["FirstFreeThreads"]

P = ParamSpec("P")
T = TypeVar("T")


class FirstFreeThreads(Executor):
    """``count`` single-thread executors; each call runs on the first idle one.

    When every thread is busy, a call queues on the one with the fewest calls waiting
    (the micro-batcher never submits more passes than there are threads, so in the
    service this only happens to a model load or a warm-up).
    """

    def __init__(self, count: int, thread_name_prefix: str) -> None:
        self._threads = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{thread_name_prefix}-{i}")
            for i in range(count)
        ]
        self._pending = [0] * count
        self._lock = threading.Lock()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            index = min(range(len(self._threads)), key=self._pending.__getitem__)
            self._pending[index] += 1
        future = self._threads[index].submit(fn, *args, **kwargs)
        future.add_done_callback(lambda _: self._done(index))
        return future

    def _done(self, index: int) -> None:
        with self._lock:
            self._pending[index] -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for thread in self._threads:
            thread.shutdown(wait=wait, cancel_futures=cancel_futures)
