"""MAX_INFLIGHT_RESPONSE_BYTES: the answers computed at once are bounded process-wide, so
many requests each within MAX_RESPONSE_BYTES cannot together exhaust memory."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from engine import Encoding, InferenceEngine, Operation, Output, Overloaded, Settings
from engine.budget import FLOAT_JSON_BYTES, AnswerPool
from tests.fake_backend import DIM, FakeBackend


class GatedBackend(FakeBackend):
    """Encodes only once ``gate`` is set, so a request can be held mid-computation."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def encode(self, texts: Sequence[str], outputs: frozenset[Output]) -> Encoding:
        self.entered.set()
        await self.gate.wait()
        return await super().encode(texts, outputs)


def _engine(backend: FakeBackend, limit: int) -> InferenceEngine:
    settings = Settings(cache_max_items=0, max_inflight_response_bytes=limit)
    return InferenceEngine(settings, {op: [backend] for op in Operation})


# One dense text of the fake's width, as JSON numbers.
ONE_TEXT = DIM * FLOAT_JSON_BYTES


def test_a_request_past_the_pool_while_another_computes_is_429_with_retry_after() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        engine = _engine(backend, limit=3 * ONE_TEXT)
        await engine.start()
        first = asyncio.create_task(engine.embed_dense(["a b", "c d"]))
        await backend.entered.wait()
        with pytest.raises(Overloaded) as refused:
            await engine.embed_dense(["e f", "g h"])
        assert refused.value.retry_after == 1
        assert "MAX_INFLIGHT_RESPONSE_BYTES" in str(refused.value)
        # What fits beside the first still goes (it waits on the same gate).
        second = asyncio.create_task(engine.embed_dense(["i j"]))
        backend.gate.set()
        dense, _ = await first
        assert dense.shape == (2, DIM)
        assert (await second)[0].shape == (1, DIM)
        # Given back: the refused request now goes.
        assert (await engine.embed_dense(["e f", "g h"]))[0].shape == (2, DIM)

    asyncio.run(scenario())


def test_one_request_alone_always_goes_however_large() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        engine = _engine(backend, limit=1)
        await engine.start()
        dense, _ = await engine.embed_dense(["a", "b", "c"])
        assert dense.shape == (3, DIM)

    asyncio.run(scenario())


def test_the_pool_is_given_back_when_a_request_fails() -> None:
    pool = AnswerPool(10)
    with pytest.raises(RuntimeError), pool.reserved(8):
        raise RuntimeError("a backend failed")
    assert pool.in_use == 0
    with pool.reserved(8):
        with pytest.raises(Overloaded), pool.reserved(3):
            pass
        assert pool.in_use == 8
    assert pool.in_use == 0
