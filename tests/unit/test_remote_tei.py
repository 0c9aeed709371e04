"""The remote backend against TEI, mocked at the HTTP boundary with respx (TEI cannot run here).

The mock is tests/fake_tei.py, which answers in the shapes of TEI 1.9.3's
published contract and checks every request body the proxy sends against it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import respx

from backends.remote import RemoteBackend
from engine import Operation, Output, Settings
from engine.errors import (
    BackendFailure,
    BackendTimeout,
    InputTooLarge,
    InvalidInput,
    Overloaded,
    StartupError,
    Unavailable,
)
from tests.fake_tei import FakeTEI, Fault

T = TypeVar("T")

EMBED_URL = "http://tei-embed:80"
RERANK_URL = "http://tei-rerank:80"
TEXTS = [f"text number {i} about {'cats ' * (i % 3)}paris" for i in range(10)]


@pytest.fixture
def embedder() -> FakeTEI:
    return FakeTEI(kind="embedding", dimension=8, max_client_batch_size=4)


@pytest.fixture
def reranker() -> FakeTEI:
    return FakeTEI(kind="reranker", max_client_batch_size=4)


@pytest.fixture
def tei(embedder: FakeTEI, reranker: FakeTEI) -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        router.route(host="tei-embed").mock(side_effect=embedder.respx_async_side_effect)
        router.route(host="tei-rerank").mock(side_effect=reranker.respx_async_side_effect)
        yield router
    # Whatever a test did, every body the proxy sent was one TEI accepts.
    assert embedder.contract_violations == []
    assert reranker.contract_violations == []


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "remote_embed_url": EMBED_URL,
        "remote_rerank_url": RERANK_URL,
        "remote_kind": "auto",
        "remote_timeout_s": 5.0,
        "remote_probe_interval_s": 0.05,
        **overrides,
    }
    return Settings(**values)


def with_backend(
    work: Callable[[RemoteBackend], Awaitable[T]],
    operations: frozenset[Operation] = frozenset({Operation.EMBED, Operation.RERANK}),
    **overrides: Any,
) -> T:
    async def run() -> T:
        # respx patches httpx's own transport; production uses the lean pooled one.
        backend = RemoteBackend(
            settings(**overrides), operations, transport=httpx.AsyncHTTPTransport
        )
        await backend.start()
        try:
            return await work(backend)
        finally:
            await backend.stop()

    return asyncio.run(run())


async def dense(backend: RemoteBackend, texts: list[str] = TEXTS) -> Any:
    return await backend.encode(texts, frozenset({Output.DENSE}))


def test_auto_finds_tei_and_declares_what_each_container_serves(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    async def work(backend: RemoteBackend) -> None:
        health = backend.health()
        assert health.healthy and health.loaded
        assert "TEI 1.9.3 serving embed (BAAI/bge-m3)" in health.detail
        assert "TEI 1.9.3 serving rerank (BAAI/bge-reranker-v2-m3)" in health.detail
        info = backend.model_info(Operation.EMBED)
        assert (info.name, info.dimension, info.max_tokens) == ("BAAI/bge-m3", 8, 512)

    with_backend(work)
    # /health first (a bge-serve answers /info too, in TEI's dialect), then /info says TEI.
    assert [r.path for r in embedder.requests][:2] == ["/health", "/info"]


def test_dense_is_split_at_max_client_batch_size_and_merged_in_order(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    encoding = with_backend(dense)
    sent = [r.json["inputs"] for r in embedder.requests if r.path == "/embed"][1:]  # after probe
    assert [len(chunk) for chunk in sent] == [4, 4, 2]
    assert [text for chunk in sent for text in chunk] == TEXTS
    expected = np.array([embedder.vector(t) for t in TEXTS], dtype=np.float32)
    np.testing.assert_array_equal(encoding.dense, expected)
    # Usage is what TEI counted (x-compute-tokens), summed over the chunks.
    assert encoding.token_count == sum(embedder.token_count(t) for t in TEXTS)
    body = sent and next(r.json for r in embedder.requests if r.path == "/embed")
    assert body["normalize"] is True and body["truncate"] is True


def test_usage_is_counted_with_tokenize_when_a_proxy_strips_the_header(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    embedder.strip_headers = True
    encoding = with_backend(dense, frozenset({Operation.EMBED}))
    assert encoding.token_count == sum(embedder.token_count(t) for t in TEXTS)
    embeds = [r.json["inputs"] for r in embedder.requests if r.path == "/embed"][1:]
    tokenizes = [r.json["inputs"] for r in embedder.requests if r.path == "/tokenize"][1:]
    # The probe found the header missing: each chunk is counted beside it, in its own words.
    assert tokenizes == embeds == [TEXTS[0:4], TEXTS[4:8], TEXTS[8:10]]
    assert embedder.contract_violations == []


def test_stripped_usage_counts_what_tei_truncated_to() -> None:
    # TEI counts a truncated text at its limit; /tokenize does not truncate.
    short = FakeTEI(kind="embedding", max_input_length=4)
    texts = ["one two three four five six", "seven"]
    counted = []
    for strip in (False, True):
        short.reset()
        short.strip_headers = strip
        with respx.mock(assert_all_called=False) as router:
            router.route(host="tei-embed").mock(side_effect=short.respx_async_side_effect)
            encoding = with_backend(lambda b: dense(b, texts), frozenset({Operation.EMBED}))
        counted.append(encoding.token_count)
    assert counted == [4 + 3, 4 + 3]


def test_rerank_is_split_reordered_by_index_and_left_raw(
    tei: respx.MockRouter, reranker: FakeTEI
) -> None:
    query = "where do cats live"
    scores = with_backend(lambda b: b.score(query, TEXTS))
    sent = [r.json for r in reranker.requests if r.path == "/rerank"][1:]  # after the probe
    assert [len(body["texts"]) for body in sent] == [4, 4, 2]
    assert all(body["raw_scores"] is True and body["query"] == query for body in sent)
    expected = [reranker.logit(query, t) for t in TEXTS]
    np.testing.assert_allclose(scores.logits, expected, rtol=1e-6)
    assert scores.token_count > 0


QUERY = "where do cats live"
DOCUMENTS = [f"document {n} says cats live in {'warm ' * (n % 4)}places" for n in range(100)]


def direct_rerank(query: str, documents: list[str]) -> tuple[list[dict[str, Any]], int]:
    """What one TEI that takes every document at once answers: ranks best first, and the
    tokens it counted."""
    whole = FakeTEI(kind="reranker", max_client_batch_size=len(documents))
    status, headers, content = whole.respond(
        "POST", "/rerank", {"query": query, "texts": documents, "raw_scores": True}, {}
    )
    assert status == 200
    return json.loads(content), int(headers["x-compute-tokens"])


@pytest.mark.parametrize("proxy_strips_headers", [False, True])
def test_rerank_of_100_documents_at_a_limit_of_4_equals_reranking_directly(
    tei: respx.MockRouter, reranker: FakeTEI, proxy_strips_headers: bool
) -> None:
    # The reproducer of issue 18: with the token header stripped, the count was one /tokenize
    # of the query and the chunk's 4 documents, 5 inputs, which TEI refuses (422).
    reranker.strip_headers = proxy_strips_headers
    scores = with_backend(lambda b: b.score(QUERY, DOCUMENTS), frozenset({Operation.RERANK}))
    ranks, tokens = direct_rerank(QUERY, DOCUMENTS)
    order = np.argsort(-scores.logits, kind="stable")
    assert order.tolist() == [rank["index"] for rank in ranks]
    np.testing.assert_array_equal(
        scores.logits[order], np.array([rank["score"] for rank in ranks], dtype=np.float32)
    )
    assert scores.token_count == tokens
    reranks = [r.json for r in reranker.requests if r.path == "/rerank"][1:]  # after the probe
    tokenizes = [r.json for r in reranker.requests if r.path == "/tokenize"]
    assert all(len(body["texts"]) <= 4 for body in reranks)
    assert all(len(body["inputs"]) <= 4 for body in tokenizes)
    # Counting never costs more round trips than the rerank itself.
    assert len(tokenizes) == (len(reranks) if proxy_strips_headers else 0)
    assert reranker.contract_violations == []


def test_tokenize_tokens_and_decode_are_split_at_the_limit(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    texts = [f"word{n} and more" for n in range(10)]

    async def work(backend: RemoteBackend) -> Any:
        ids = await backend.token_ids(texts)
        rows = await backend.tokens(texts, add_special_tokens=False)
        decoded = await backend.decode(ids, skip_special_tokens=True)
        return ids, rows, decoded

    ids, rows, decoded = with_backend(work, frozenset({Operation.EMBED}))
    assert ids == tuple([t["id"] for t in embedder.tokens(text)] for text in texts)
    assert [[token.text for token in row] for row in rows] == [text.split() for text in texts]
    assert decoded == tuple(texts)
    tokenized = [len(r.json["inputs"]) for r in embedder.requests if r.path == "/tokenize"]
    assert tokenized == [4, 4, 2, 4, 4, 2]
    assert [len(r.json["ids"]) for r in embedder.requests if r.path == "/decode"] == [4, 4, 2]


def test_chunks_also_fit_max_concurrent_requests() -> None:
    # TEI takes a permit per input (core/src/infer.rs): a request of more inputs than
    # max_concurrent_requests is refused 429 however often it is retried.
    narrow = FakeTEI(kind="embedding", max_client_batch_size=8, max_concurrent_requests=3)
    with respx.mock(assert_all_called=False) as router:
        router.route(host="tei-embed").mock(side_effect=narrow.respx_async_side_effect)
        encoding = with_backend(dense, frozenset({Operation.EMBED}), remote_max_concurrency=1)
    np.testing.assert_array_equal(
        encoding.dense, np.array([narrow.vector(t) for t in TEXTS], dtype=np.float32)
    )
    assert [len(r.json["inputs"]) for r in narrow.requests if r.path == "/embed"][1:] == [
        3,
        3,
        3,
        1,
    ]


def test_tei_validations_become_the_requests_own_errors() -> None:
    """Each of TEI's refusals of a request, as TEI words it, as the error kind it is."""
    strict = FakeTEI(kind="embedding", max_input_length=4, auto_truncate=False)
    judge = FakeTEI(kind="reranker", max_input_length=6, auto_truncate=False)
    with respx.mock(assert_all_called=False) as router:
        router.route(host="tei-embed").mock(side_effect=strict.respx_async_side_effect)
        router.route(host="tei-rerank").mock(side_effect=judge.respx_async_side_effect)

        async def work(backend: RemoteBackend) -> None:
            with pytest.raises(InputTooLarge, match=r"must have less than 4 tokens\. Given: 7"):
                await dense(backend, ["one two three four five"])
            with pytest.raises(InputTooLarge, match=r"must have less than 6 tokens\. Given: 9"):
                await backend.score("a b", ["c d e"])
            with pytest.raises(InputTooLarge, match=r"less than 1000 characters\. Given: 1001"):
                await backend.tokens(["x" * 1001], add_special_tokens=True)
            with pytest.raises(InvalidInput, match="`inputs` cannot be empty"):
                await dense(backend, ["fine", ""])
            with pytest.raises(InvalidInput, match="`input_ids` cannot be empty"):
                await backend.decode([[5], []], skip_special_tokens=True)
            assert backend.health().healthy

        with_backend(work, truncate=False)


def test_a_container_changed_since_its_probe_is_a_backend_failure_then_reprobed(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    async def work(backend: RemoteBackend) -> None:
        embedder.max_client_batch_size = 2  # restarted with a lower limit
        with pytest.raises(BackendFailure, match="now takes at most 2 inputs a request"):
            await dense(backend, TEXTS[:4])
        assert not backend.health().healthy
        for _ in range(100):
            if backend.health().healthy:
                break
            await asyncio.sleep(0.02)
        encoding = await dense(backend, TEXTS[:4])
        assert encoding.dense is not None and encoding.dense.shape == (4, 8)
        embedder.kind = "reranker"  # another model behind the same URL
        with pytest.raises(BackendFailure, match="HTTP 424: Backend error: Model is not an"):
            await dense(backend, ["one"])

    with_backend(work, frozenset({Operation.EMBED}))
    assert [len(r.json["inputs"]) for r in embedder.requests if r.path == "/embed"][-3:-1] == [
        2,
        2,
    ]


def test_tei_overloaded_is_retried_then_overloaded(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    async def work(backend: RemoteBackend) -> None:
        embedder.max_concurrent_requests = 0  # every permit taken by other clients
        with pytest.raises(Overloaded, match="overloaded: Model is overloaded"):
            await dense(backend, ["one"])

    with_backend(work, frozenset({Operation.EMBED}), remote_retries=1)


def test_tokenize_uses_tei_tokenize(tei: respx.MockRouter, embedder: FakeTEI) -> None:
    rows = with_backend(lambda b: b.token_ids(["hello world", "x"]))
    assert rows == tuple([t["id"] for t in embedder.tokens(text)] for text in ["hello world", "x"])


def test_a_bge_m3_container_has_no_sparse_capability_and_is_never_asked(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    with pytest.raises(StartupError) as failure:
        with_backend(dense, frozenset({Operation.LEXICAL_COLBERT}), remote_sparse_url=EMBED_URL)
    message = str(failure.value)
    assert message.startswith("LEXICAL_COLBERT_BACKENDS: the remote backend cannot serve sparse")
    assert "SPLADE" in message and "flag" in message
    assert not any(r.path == "/embed_sparse" for r in embedder.requests)


def test_a_splade_container_serves_sparse_only() -> None:
    splade = FakeTEI(kind="splade")
    with respx.mock(assert_all_called=False) as router:
        router.route(host="tei-splade").mock(side_effect=splade.respx_async_side_effect)

        async def work(backend: RemoteBackend) -> Any:
            with pytest.raises(Unavailable, match="cannot compute dense"):
                await backend.encode(["a"], frozenset({Output.DENSE, Output.LEXICAL}))
            return await backend.encode(["cat", "dog house"], frozenset({Output.LEXICAL}))

        encoding = with_backend(
            work, frozenset({Operation.LEXICAL_COLBERT}), remote_sparse_url="http://tei-splade"
        )
    assert encoding.lexical is not None
    for weights, text in zip(encoding.lexical, ["cat", "dog house"], strict=True):
        expected = splade.sparse(text)
        assert weights.token_ids.tolist() == [i for i, _ in expected]
        np.testing.assert_allclose(weights.weights, [v for _, v in expected], rtol=1e-6)
    assert splade.contract_violations == []


def test_one_url_for_embed_and_rerank_on_tei_is_a_start_up_error(tei: respx.MockRouter) -> None:
    with pytest.raises(StartupError, match="RERANK_BACKENDS: the remote backend cannot serve"):
        with_backend(dense, remote_url=EMBED_URL, remote_embed_url=None, remote_rerank_url=None)


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (
            Fault.status(422, message="Input validation error: too long"),
            InvalidInput,
            "refused the input: Input validation error",
        ),
        (
            Fault.status(424, message="Inference failed"),
            BackendFailure,
            "HTTP 424: Inference failed",
        ),
        (Fault.malformed(), BackendFailure, "malformed body"),
        (Fault.wrong_shape(), BackendFailure, "malformed body"),
        (Fault.short(), BackendFailure, "answered /embed with 1 results for 2 inputs"),
    ],
)
def test_refusals_and_bad_answers_become_engine_errors(
    tei: respx.MockRouter, embedder: FakeTEI, fault: Fault, error: type[Exception], message: str
) -> None:
    async def work(backend: RemoteBackend) -> None:
        embedder.fault = fault
        with pytest.raises(error, match=message) as raised:
            await dense(backend, ["one", "two"])
        assert EMBED_URL.removesuffix(":80") in str(raised.value)
        embedder.fault = None  # not retried: one request, and the remote stays up
        assert backend.health().healthy

    with_backend(work, frozenset({Operation.EMBED}))
    assert sum(r.path == "/embed" for r in embedder.requests) == 2  # probe + the one call


@pytest.mark.parametrize("route", ["/embed", "/rerank"])
@pytest.mark.parametrize("strips_headers", [False, True])
def test_a_broken_answer_counted_beside_names_the_route_asked_for(
    tei: respx.MockRouter, embedder: FakeTEI, reranker: FakeTEI, route: str, strips_headers: bool
) -> None:
    """Where tokens are counted with a /tokenize beside the call, both fail together: the
    client is told of the call it made, as one engine error (never an ExceptionGroup)."""
    fake = embedder if route == "/embed" else reranker

    async def work(backend: RemoteBackend) -> None:
        fake.strip_headers = strips_headers
        fake.fault = Fault.malformed()
        call = (
            dense(backend, ["one", "two"])
            if route == "/embed"
            else backend.score("q", ["one", "two"])
        )
        with pytest.raises(BackendFailure, match=f"answered {route} with a malformed body"):
            await call
        fake.fault = None
        assert backend.health().healthy

    with_backend(work)


def test_429_is_retried_after_retry_after_then_answers(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    async def work(backend: RemoteBackend) -> float:
        embedder.faults.extend([Fault.status(429, retry_after=1), Fault.status(503)])
        started = time.monotonic()
        encoding = await dense(backend, ["one"])
        assert encoding.dense is not None
        assert backend.health().stats["retries"] == 2
        return time.monotonic() - started

    assert with_backend(work, frozenset({Operation.EMBED})) >= 1.0  # Retry-After honoured


def test_retries_are_bounded_then_overloaded_carries_retry_after(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    async def work(backend: RemoteBackend) -> None:
        embedder.fault = Fault.status(429, retry_after=0)
        with pytest.raises(Overloaded) as raised:
            await dense(backend, ["one"])
        assert raised.value.retry_after >= 1

    with_backend(work, frozenset({Operation.EMBED}), remote_retries=2)
    assert sum(r.path == "/embed" for r in embedder.requests) == 1 + 3  # probe + 1 + 2 retries


def test_a_retry_after_beyond_the_deadline_is_not_waited_for(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    async def work(backend: RemoteBackend) -> float:
        embedder.fault = Fault.status(503, retry_after=60)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await dense(backend, ["one"])
        return time.monotonic() - started

    assert with_backend(work, frozenset({Operation.EMBED}), remote_timeout_s=2.0) < 1.0


def test_a_slow_remote_times_out_at_the_deadline(tei: respx.MockRouter, embedder: FakeTEI) -> None:
    async def work(backend: RemoteBackend) -> float:
        embedder.delay_s = 3.0
        started = time.monotonic()
        with pytest.raises(BackendTimeout, match=r"within 0.5 s \(REMOTE_TIMEOUT_S\)"):
            await dense(backend, ["one"])
        return time.monotonic() - started

    elapsed = with_backend(work, frozenset({Operation.EMBED}), remote_timeout_s=0.5)
    assert 0.4 < elapsed < 1.5


def test_a_dropped_connection_is_retried(tei: respx.MockRouter, embedder: FakeTEI) -> None:
    async def work(backend: RemoteBackend) -> None:
        embedder.faults.append(Fault.drop())
        encoding = await dense(backend, ["one", "two"])
        assert encoding.dense is not None and encoding.dense.shape == (2, 8)
        assert backend.health().healthy

    with_backend(work, frozenset({Operation.EMBED}))


def test_an_unreachable_remote_is_marked_down_then_reprobed_until_back(
    embedder: FakeTEI,
) -> None:
    reachable = False

    async def maybe(request: Any) -> Any:
        if not reachable:
            raise httpx.ConnectError("connection refused", request=request)
        return await embedder.respx_async_side_effect(request)

    async def work(backend: RemoteBackend) -> None:
        nonlocal reachable
        health = backend.health()
        assert not health.healthy and not health.loaded
        assert "unreachable" in health.detail
        with pytest.raises(Unavailable, match="is down"):
            await dense(backend, ["one"])  # fails fast: no request while it is down
        reachable = True
        for _ in range(100):
            if backend.health().healthy:
                break
            await asyncio.sleep(0.02)
        assert backend.health().healthy
        encoding = await dense(backend, ["one"])
        assert encoding.dense is not None

    with respx.mock(assert_all_called=False) as router:
        router.route(host="tei-embed").mock(side_effect=maybe)
        with_backend(work, frozenset({Operation.EMBED}))


def test_api_key_is_sent_as_bearer_and_credentials_never_reach_messages(
    embedder: FakeTEI,
) -> None:
    with respx.mock(assert_all_called=False) as router:
        router.route(host="tei-embed").mock(side_effect=embedder.respx_async_side_effect)

        async def work(backend: RemoteBackend) -> None:
            embedder.fault = Fault.status(424, message="boom")
            with pytest.raises(BackendFailure) as raised:
                await dense(backend, ["one"])
            assert "hunter2" not in str(raised.value) and "alice" not in str(raised.value)
            assert "http://tei-embed" in str(raised.value)
            assert "alice" not in backend.health().detail

        with_backend(
            work,
            frozenset({Operation.EMBED}),
            remote_embed_url="http://alice:hunter2@tei-embed",
            remote_api_key="s3cret",
        )
    assert all(r.headers["authorization"] == "Bearer s3cret" for r in embedder.requests)
    assert "s3cret" not in repr(settings(remote_api_key="s3cret"))
