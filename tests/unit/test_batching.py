"""The micro-batcher: shared passes, results by position, budgets, shedding, departures."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.batching import MicroBatcher, Unit
from engine.errors import Overloaded


class Model:
    """Answers each payload with a function of itself; records every batch it saw."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = gate

    def run(self, payloads: list[str]) -> list[str]:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.batches.append(list(payloads))
        if "boom" in payloads:
            raise ValueError("model failure")
        return [p.upper() for p in payloads]


def batcher(model: Model, **limits: float) -> MicroBatcher[str, str]:
    settings: dict[str, float] = {
        "max_batch_tokens": 1000,
        "max_batch_items": 64,
        "max_wait_s": 0.005,
        "max_queued_requests": 1000,
    }
    settings.update(limits)
    return MicroBatcher(
        "test",
        model.run,
        executor=ThreadPoolExecutor(1),
        max_batch_tokens=int(settings["max_batch_tokens"]),
        max_batch_items=int(settings["max_batch_items"]),
        max_wait_s=settings["max_wait_s"],
        max_queued_requests=int(settings["max_queued_requests"]),
    )


def units(texts: list[str]) -> list[Unit[str]]:
    return [Unit(text, len(text)) for text in texts]


def test_concurrent_requests_share_passes_and_get_their_own_results() -> None:
    model = Model()
    rng = random.Random(0)

    async def main() -> None:
        b = batcher(model)
        b.start()
        requests = [
            [f"r{r}-t{t}-" + "x" * rng.randint(1, 30) for t in range(rng.randint(1, 5))]
            for r in range(200)
        ]
        answers = await asyncio.gather(*(b.submit(units(texts)) for texts in requests))
        for texts, answer in zip(requests, answers, strict=True):
            assert answer == [t.upper() for t in texts]
        await b.stop()

    asyncio.run(main())
    assert len(model.batches) < 200  # requests shared forward passes
    for batch in model.batches:
        assert len(batch) * max(len(p) for p in batch) <= 1000
        assert [len(p) for p in batch] == sorted((len(p) for p in batch), reverse=True)


def test_an_oversized_unit_runs_alone() -> None:
    model = Model()

    async def main() -> list[str]:
        b = batcher(model, max_batch_tokens=10)
        b.start()
        out = await b.submit(units(["a" * 50, "b"]))
        await b.stop()
        return out

    assert asyncio.run(main()) == ["A" * 50, "B"]
    assert sorted(len(batch) for batch in model.batches) == [1, 1]


def test_cancelled_request_is_skipped_before_compute() -> None:
    gate = threading.Event()
    model = Model(gate)

    async def main() -> None:
        b = batcher(model, max_batch_items=1)
        b.start()
        first = asyncio.create_task(b.submit(units(["first"])))
        await asyncio.sleep(0.05)  # "first" is now blocked inside the model
        gone = asyncio.create_task(b.submit(units(["gone-1", "gone-2"])))
        await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        assert await first == ["FIRST"]
        assert await b.submit(units(["after"])) == ["AFTER"]
        assert b.stats.units_skipped == 2
        assert b.stats.units_computed == 2
        await b.stop()

    asyncio.run(main())
    assert all("gone" not in p for batch in model.batches for p in batch)


def test_full_queue_is_overloaded_then_recovers() -> None:
    gate = threading.Event()
    model = Model(gate)

    async def main() -> None:
        b = batcher(model, max_queued_requests=2)
        b.start()
        held = [asyncio.create_task(b.submit(units([f"held{i}"]))) for i in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as info:
            await b.submit(units(["refused"]))
        assert info.value.retry_after >= 1
        assert "MAX_QUEUED_REQUESTS" in info.value.message
        gate.set()
        assert [await h for h in held] == [["HELD0"], ["HELD1"]]
        assert await b.submit(units(["later"])) == ["LATER"]
        assert b.stats.rejected_requests == 1
        await b.stop()

    asyncio.run(main())


def test_model_failure_fails_its_requests_and_the_worker_survives() -> None:
    model = Model()

    async def main() -> None:
        b = batcher(model, max_wait_s=0.05)
        b.start()
        bad, good = await asyncio.gather(
            b.submit(units(["boom"])), b.submit(units(["fine"])), return_exceptions=True
        )
        assert isinstance(bad, ValueError)
        assert isinstance(good, ValueError)  # same forward pass, same failure
        assert await b.submit(units(["next"])) == ["NEXT"]
        await b.stop()

    asyncio.run(main())


def test_two_workers_run_passes_at_once_and_never_mix_results() -> None:
    model = Model()

    async def main() -> None:
        b: MicroBatcher[str, str] = MicroBatcher(
            "two",
            model.run,
            executor=ThreadPoolExecutor(2),
            max_batch_tokens=64,
            max_batch_items=4,
            max_wait_s=0.001,
            max_queued_requests=1000,
            workers=2,
        )
        b.start()
        requests = [[f"{r}-{t}" for t in range(r % 4 + 1)] for r in range(100)]
        answers = await asyncio.gather(*(b.submit(units(texts)) for texts in requests))
        assert answers == [[t.upper() for t in texts] for texts in requests]
        await b.stop()

    asyncio.run(main())
