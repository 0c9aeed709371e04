"""A one-text request behind a 2,048-text one waits for one pass of it, not all of them."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from engine.batching import MicroBatcher, Unit


def test_a_small_request_runs_in_the_next_pass_not_after_a_big_one() -> None:
    batches: list[list[str]] = []

    def run(payloads: list[str]) -> list[str]:
        batches.append(list(payloads))
        return payloads

    async def main() -> None:
        batcher: MicroBatcher[str, str] = MicroBatcher(
            "test",
            run,
            executor=ThreadPoolExecutor(1),
            max_batch_tokens=1000,  # 10 of the big request's 100-token units a pass
            max_batch_items=64,
            max_wait_s=0,
            max_queued_requests=10,
        )
        batcher.start()
        big = asyncio.ensure_future(batcher.submit([Unit(f"big{i}", 100) for i in range(2048)]))
        await asyncio.sleep(0)
        small = await batcher.submit([Unit("small", 3)])
        assert small == ["small"]
        assert len(await big) == 2048
        await batcher.stop()

    asyncio.run(main())
    assert len(batches) >= 205  # the big request still runs in full passes
    ran_in = next(i for i, batch in enumerate(batches) if "small" in batch)
    assert ran_in <= 1, f"the small request ran in pass {ran_in} of {len(batches)}"
    assert all(sum(100 if p.startswith("big") else 3 for p in b) <= 1000 for b in batches)
