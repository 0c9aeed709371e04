"""Fuller passes: a batch waits for company while the model is busy, never while it idles."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from engine.batching import MicroBatcher, Unit


class Model:
    """Records every pass; the pass holding ``hold`` blocks until ``gate`` opens."""

    def __init__(self, hold: str = "", seconds: float = 0.0) -> None:
        self.passes: list[list[str]] = []
        self.gate = threading.Event()
        self.hold = hold
        self.seconds = seconds

    def run(self, payloads: list[str]) -> list[str]:
        self.passes.append(list(payloads))
        if self.hold in payloads:
            self.gate.wait(timeout=30)
        if self.seconds:
            time.sleep(self.seconds)  # a forward pass: the GIL is released meanwhile
        return [p.upper() for p in payloads]


def batcher(
    model: Model, *, max_wait_s: float, workers: int = 2, max_batch_items: int = 256
) -> MicroBatcher[str, str]:
    return MicroBatcher(
        "test",
        model.run,
        executor=ThreadPoolExecutor(workers),
        max_batch_tokens=16_384,
        max_batch_items=max_batch_items,
        max_wait_s=max_wait_s,
        max_queued_requests=1000,
        workers=workers,
    )


def one(text: str) -> list[Unit[str]]:
    return [Unit(text, len(text))]


async def until(condition: object, what: str) -> None:
    for _ in range(1000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_arrivals_while_a_pass_runs_wait_for_it_and_share_the_next_pass() -> None:
    """Twenty requests trickle in (each after more than the quiet gap) while the other
    worker's pass runs: they wait for it and go as one pass, not twenty."""
    model = Model(hold="first")

    async def main() -> None:
        b = batcher(model, max_wait_s=60)
        b.start()
        first = asyncio.create_task(b.submit(one("first")))
        await until(lambda: model.passes, "the first pass started")
        later = []
        for i in range(20):
            later.append(asyncio.create_task(b.submit(one(f"later-{i:02}"))))
            await asyncio.sleep(0.004)
        assert len(model.passes) == 1  # all twenty still waiting for company
        model.gate.set()
        assert await first == ["FIRST"]
        assert [await task for task in later] == [[f"LATER-{i:02}"] for i in range(20)]
        await b.stop()

    asyncio.run(main())
    assert [len(p) for p in model.passes] == [1, 20]


def test_a_lone_request_never_waits_for_max_wait() -> None:
    """With the model idle a request goes after one quiet gap, however long
    ``max_wait_s`` is: it never waits for a batch that never comes."""
    model = Model()

    async def main() -> None:
        b = batcher(model, max_wait_s=3600)
        b.start()
        for i in range(5):
            assert await asyncio.wait_for(b.submit(one(f"alone-{i}")), timeout=20) == [f"ALONE-{i}"]
        await b.stop()

    asyncio.run(main())
    assert [len(p) for p in model.passes] == [1] * 5


def test_waiting_behind_a_busy_model_is_bounded_by_max_wait() -> None:
    """A pass that never ends does not hold the next batch past ``max_wait_s``: it
    runs on the other worker while the first is still blocked."""
    model = Model(hold="stuck")

    async def main() -> None:
        b = batcher(model, max_wait_s=0.05)
        b.start()
        stuck = asyncio.create_task(b.submit(one("stuck")))
        await until(lambda: model.passes, "the stuck pass started")
        assert await asyncio.wait_for(b.submit(one("next")), timeout=20) == ["NEXT"]
        assert not stuck.done()
        model.gate.set()
        assert await stuck == ["STUCK"]
        await b.stop()

    asyncio.run(main())


def test_a_burst_over_one_batch_splits_into_full_passes_not_scraps() -> None:
    """40 units at once with room for 16 a pass: the two idle workers take 16 each
    (one forms at a time, so neither gets a scrap of the other's burst), the rest
    the next pass."""
    model = Model()

    async def main() -> None:
        b = batcher(model, max_wait_s=0.5, max_batch_items=16)
        b.start()
        answers = await asyncio.gather(*(b.submit(one(f"t{i:02}")) for i in range(40)))
        assert answers == [[f"T{i:02}"] for i in range(40)]
        await b.stop()

    asyncio.run(main())
    assert sorted(len(p) for p in model.passes) == [8, 16, 16]


def test_answered_clients_coming_back_one_by_one_share_one_pass() -> None:
    """Eight requests answered together come back one at a time, each after more
    than the quiet gap, to an idle model: they are expected back, so they are
    waited for and share one pass instead of running as eight."""
    model = Model()

    async def main() -> None:
        b = batcher(model, max_wait_s=60, workers=1)
        b.start()
        assert await asyncio.gather(*(b.submit(one(f"a{i}")) for i in range(8))) == [
            [f"A{i}"] for i in range(8)
        ]
        back = []
        for i in range(8):
            back.append(asyncio.create_task(b.submit(one(f"b{i}"))))
            await asyncio.sleep(0.004)
        assert [await task for task in back] == [[f"B{i}"] for i in range(8)]
        await b.stop()

    asyncio.run(main())
    assert [len(p) for p in model.passes] == [8, 8]


def test_clients_that_never_come_back_hold_nobody_past_max_wait() -> None:
    """Answers expected back that never return: a new request still goes, within
    ``max_wait_s``, not after a batch that never comes."""
    model = Model()

    async def main() -> None:
        b = batcher(model, max_wait_s=0.05, workers=1)
        b.start()
        await asyncio.gather(*(b.submit(one(f"gone{i}")) for i in range(8)))
        assert await asyncio.wait_for(b.submit(one("new")), timeout=20) == ["NEW"]
        await b.stop()

    asyncio.run(main())
    assert [len(p) for p in model.passes] == [8, 1]


def test_closed_loop_clients_fill_passes() -> None:
    """32 clients, each sending its next one-text request a little while after its
    last answer: the requests that come back while a pass runs share the next one."""
    model = Model(seconds=0.03)
    rng = random.Random(0)

    async def main() -> None:
        b = batcher(model, max_wait_s=0.2)
        b.start()

        async def client(c: int) -> None:
            for i in range(4):
                assert await b.submit(one(f"c{c}-{i}")) == [f"C{c}-{i}"]
                await asyncio.sleep(rng.uniform(0.002, 0.01))  # the answer out, the next in

        await asyncio.gather(*(client(c) for c in range(32)))
        await b.stop()

    asyncio.run(main())
    sizes = [len(p) for p in model.passes]
    assert sum(sizes) == 32 * 4
    assert sum(sizes) / len(sizes) >= 8, sizes


def test_sorted_and_split_passes_hand_each_result_to_its_own_request() -> None:
    """One long text among short ones: two passes (no pass mostly padding), each
    longest first, and every request gets its own answers in its own order."""
    model = Model(hold="hold")

    async def main() -> list[list[str]]:
        b = batcher(model, max_wait_s=60, workers=1)
        b.start()
        held = asyncio.create_task(b.submit(one("hold")))
        await until(lambda: model.passes, "the held pass started")
        rng = random.Random(3)
        requests = [[f"r{r}-{t}-" + "x" * rng.randint(1, 12) for t in range(3)] for r in range(8)]
        requests.append(["long-" + "y" * 300, "short"])
        tasks = [
            asyncio.create_task(b.submit([Unit(t, len(t)) for t in texts])) for texts in requests
        ]
        await asyncio.sleep(0.05)
        model.gate.set()
        assert await held == ["HOLD"]
        answers = [await task for task in tasks]
        assert answers == [[t.upper() for t in texts] for texts in requests]
        await b.stop()
        return requests

    requests = asyncio.run(main())
    first, *rest = model.passes
    assert first == ["hold"]
    assert rest[0] == ["long-" + "y" * 300]
    assert sorted(rest[1]) == sorted(t for texts in requests for t in texts if "y" not in t)
    assert [len(p) for p in rest[1]] == sorted((len(p) for p in rest[1]), reverse=True)
