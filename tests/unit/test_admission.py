"""One admission rule for every backend (engine/admission.py): past MAX_QUEUED_REQUESTS
requests waiting or running, one more is refused at once with 429 and Retry-After. The
micro-batcher's side is in test_batching.py (test_full_queue_is_overloaded_then_recovers)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import respx

from api.errors import problem_of
from backends.infinity import InfinityBackend
from backends.remote import RemoteBackend
from engine import Operation, Output, Settings
from engine.admission import Admission
from engine.errors import Overloaded
from tests.fake_tei import FakeTEI

DENSE = frozenset({Output.DENSE})


def assert_429_with_retry_after(refused: Overloaded) -> None:
    problem = problem_of(refused)
    assert (problem.status.http, problem.status.tei_http) == (429, 429)
    assert problem.retry_after is not None and problem.retry_after >= 1
    assert "MAX_QUEUED_REQUESTS" in problem.message


def test_an_admission_refuses_past_its_limit_and_frees_its_place_on_any_exit() -> None:
    admission = Admission(2, "the test queue")
    with admission.admit(), admission.admit():
        with pytest.raises(Overloaded) as refused, admission.admit():
            pass
        assert admission.counts.queued_requests == 2
    assert refused.value.message == (
        "the test queue is full (2 requests waiting or running; MAX_QUEUED_REQUESTS); retry shortly"
    )
    assert_429_with_retry_after(refused.value)
    with pytest.raises(RuntimeError), admission.admit():
        raise RuntimeError
    assert (admission.counts.queued_requests, admission.counts.rejected_requests) == (0, 1)


def test_a_remote_with_its_cap_and_its_queue_full_answers_429_instead_of_waiting() -> None:
    """REMOTE_MAX_CONCURRENCY=1 request in flight to the remote, one more waiting its turn:
    MAX_QUEUED_REQUESTS=2 are admitted, and a third is refused at once, never sent."""
    embedder = FakeTEI(kind="embedding", dimension=8)
    settings = Settings(
        remote_embed_url="http://tei-embed:80",
        remote_kind="tei",
        remote_timeout_s=30.0,
        remote_max_concurrency=1,
        max_queued_requests=2,
    )

    async def run() -> None:
        backend = RemoteBackend(
            settings, frozenset({Operation.EMBED}), transport=httpx.AsyncHTTPTransport
        )
        await backend.start()
        try:
            embedder.delay_s = 1.0
            held = [asyncio.create_task(backend.encode([text], DENSE)) for text in ("a", "b")]
            await asyncio.sleep(0.2)  # "a" at the remote, "b" waiting for the one slot
            with pytest.raises(Overloaded) as refused:
                # Before one admission rule, the third waited for a slot (up to 30 s).
                await asyncio.wait_for(backend.encode(["c"], DENSE), 0.5)
            assert_429_with_retry_after(refused.value)
            assert "the remote http://tei-embed" in refused.value.message
            assert backend.health().stats["rejected_requests"] == 1
            for task in held:
                assert (await task).dense is not None
            embedder.delay_s = 0.0
            assert (await backend.encode(["d"], DENSE)).dense is not None  # room again
        finally:
            await backend.stop()

    with respx.mock(assert_all_called=False) as router:
        router.route(host="tei-embed").mock(side_effect=embedder.respx_async_side_effect)
        asyncio.run(run())
    embedded = [r.json["inputs"] for r in embedder.requests if r.path == "/embed"][1:]
    assert embedded == [["a"], ["b"], ["d"]]  # after the probe; "c" never sent


class _BlockedReranker:
    """infinity_emb's rerank engine, answering once ``gate`` opens."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def rerank(self, *, query: str, docs: list[str], raw_scores: bool) -> Any:
        await self.gate.wait()
        return [SimpleNamespace(index=i, relevance_score=float(i)) for i in range(len(docs))], 3


def test_the_infinity_backend_admits_by_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = InfinityBackend(
        Settings(device="cpu", max_queued_requests=1), frozenset({Operation.RERANK})
    )

    async def run() -> None:
        reranker = _BlockedReranker()
        monkeypatch.setattr(backend, "_engine", lambda operation: reranker)
        first = asyncio.create_task(backend.score("q", ["x", "y"]))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as refused:
            await backend.score("q", ["z"])
        assert_429_with_retry_after(refused.value)
        assert "the infinity backend is full" in refused.value.message
        assert backend.health().stats == {"in_flight": 1, "rejected_requests": 1}
        reranker.gate.set()
        np.testing.assert_array_equal((await first).logits, [0.0, 1.0])
        await backend.score("q", ["z"])
        assert backend.health().stats == {"in_flight": 0, "rejected_requests": 1}
        await backend.stop()

    asyncio.run(run())
