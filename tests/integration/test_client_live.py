"""bge-client against live bge-serve processes: each method's result is the route's own
answer (hybrid's ColBERT pruning and integer formats included), batches follow the
server's MAX_BATCH_SIZE, a 429 storm (MAX_QUEUED_REQUESTS=1) is ridden out on
``Retry-After``, the API key is sent, and a sparse space the server does not answer in
is refused."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from bge_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    SparseSpace,
    SparseSpaceMismatch,
)
from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.texts import DOCUMENTS, LONG_TEXT, QUERY, TEXTS

API_KEY = "client-live-key"
GUARDED_BATCH = 4
INPUTS = TEXTS[:10]


@pytest.fixture(scope="module")
def guarded(models: ModelDirs) -> Iterator[Server]:
    """A key, a small batch limit and a queue of one: most concurrent requests get 429."""
    live = start_server(
        models,
        {
            "API_KEY": API_KEY,
            "MAX_QUEUED_REQUESTS": "1",
            "MAX_BATCH_SIZE": str(GUARDED_BATCH),
        },
    )
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def bge(server: Server) -> Iterator[Client]:
    with Client(server.url, timeout=120) as client:
        yield client


def post(server: Server, path: str, body: dict[str, object]) -> object:
    response = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_dense_is_the_routes(bge: Client, server: Server) -> None:
    answer = post(server, "/v1/embeddings", {"input": INPUTS})
    expected = np.array([row["embedding"] for row in answer["data"]])  # type: ignore[index]
    for wire in ("base64", "float"):
        got = bge.embed(INPUTS, encoding_format=wire)  # type: ignore[arg-type]
        np.testing.assert_allclose(np.array(got.vectors), expected, atol=1e-6)
    half = bge.embed(INPUTS, encoding_format="float16")
    np.testing.assert_allclose(np.array(half.vectors), expected, atol=2e-3)
    quantized = bge.embed_quantized(INPUTS, "int8")
    assert quantized.scales is not None
    np.testing.assert_allclose(
        np.array(quantized.vectors) * np.array(quantized.scales)[:, None], expected, atol=1e-2
    )


def test_sparse_and_hybrid_are_the_routes(bge: Client, server: Server) -> None:
    answer = post(server, "/v1/hybrid-embeddings", {"input": INPUTS, "return_colbert": True})
    data = answer["data"]  # type: ignore[index]
    hybrid = bge.hybrid(INPUTS, colbert=True)
    sparse = bge.sparse(INPUTS)
    assert hybrid.space == sparse.space == bge.sparse_space()
    assert hybrid.space.mapping == "tokenizer"
    for row, got, alone in zip(data, hybrid.vectors, sparse.vectors, strict=True):
        np.testing.assert_allclose(got.dense, row["dense"], atol=1e-6)
        assert got.sparse.indices == alone.indices == row["sparse"]["indices"]
        np.testing.assert_allclose(got.sparse.values, row["sparse"]["values"], rtol=1e-5)
        assert got.colbert is not None
        np.testing.assert_allclose(np.array(got.colbert), np.array(row["colbert"]), atol=1e-6)


def test_pruned_and_half_precision_hybrid_is_the_routes(bge: Client, server: Server) -> None:
    body = {"input": INPUTS, "return_colbert": True, "colbert_max_tokens": 3}
    answer = post(server, "/v1/hybrid-embeddings", {**body, "encoding_format": "float16"})
    data = answer["data"]  # type: ignore[index]
    got = bge.hybrid(INPUTS, colbert=True, colbert_max_tokens=3, encoding_format="float16")

    def half(row: str) -> list[float]:
        values: list[float] = np.frombuffer(base64.b64decode(row), "<f2").tolist()
        return values

    for row, vector in zip(data, got.vectors, strict=True):
        assert vector.dense == half(row["dense"])
        assert vector.colbert == [half(r) for r in row["colbert"]]
        assert vector.sparse.indices == row["sparse"]["indices"]
        assert 0 < len(vector.colbert) <= 3
    # A client that reads no /health gets the same, in one request.
    with Client(server.url, read_health=False, timeout=120) as unread:
        same = unread.hybrid(INPUTS, colbert=True, colbert_max_tokens=3, encoding_format="float16")
        assert same.vectors == got.vectors and same.space == got.space


@pytest.mark.parametrize("form", ["int8", "uint8", "binary"])
def test_quantized_hybrid_is_the_routes(bge: Client, server: Server, form: str) -> None:
    body = {"input": INPUTS, "return_colbert": True, "colbert_max_tokens": 4}
    answer = post(server, "/v1/hybrid-embeddings", {**body, "encoding_format": form})
    data = answer["data"]  # type: ignore[index]
    got = bge.hybrid_quantized(INPUTS, form, colbert=True, colbert_max_tokens=4)  # type: ignore[arg-type]
    assert got.format == form and got.space == bge.sparse_space()
    for row, vector in zip(data, got.vectors, strict=True):
        assert vector.dense == row["dense"]
        assert vector.colbert == row["colbert"]
        assert vector.dense_scale == row.get("dense_scale")
        assert vector.colbert_scales == row.get("colbert_scales")
        assert vector.sparse.indices == row["sparse"]["indices"]
        assert (vector.dense_scale is None) == (form == "binary")
    assert len(got.vectors) == len(INPUTS)


def test_rerank_m3_score_and_tokenize_are_the_routes(bge: Client, server: Server) -> None:
    answer = post(server, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 3})
    ranking = bge.rerank(QUERY, DOCUMENTS, top_n=3)
    results = answer["results"]  # type: ignore[index]
    assert [r.index for r in ranking.results] == [r["index"] for r in results]
    assert [r.document for r in ranking.results] == [DOCUMENTS[r["index"]] for r in results]
    np.testing.assert_allclose(
        [r.score for r in ranking.results], [r["relevance_score"] for r in results], atol=1e-6
    )
    scores = bge.m3_score(QUERY, DOCUMENTS[:4])
    expected = post(server, "/v1/m3-score", {"query": QUERY, "documents": DOCUMENTS[:4]})
    np.testing.assert_allclose(
        [s.colbert_sparse_dense for s in scores.results],
        [r["colbert+sparse+dense"] for r in expected["results"]],  # type: ignore[index]
        atol=1e-5,
    )
    tokens = bge.tokenize(INPUTS[:3])
    assert [[t.id for t in row] for row in tokens] == [
        [t["id"] for t in row]
        for row in post(server, "/tokenize", {"inputs": INPUTS[:3]})  # type: ignore[attr-defined]
    ]


def test_batches_follow_the_servers_limit_and_the_key(guarded: Server) -> None:
    sizes: list[int] = []

    def count(request: httpx.Request) -> None:
        if request.url.path == "/v1/embeddings":
            sizes.append(len(httpx.Response(200, content=request.content).json()["input"]))

    http = httpx.HTTPTransport()
    transport = _Recording(http, count)
    with Client(guarded.url, api_key=API_KEY, transport=transport) as bge:
        assert bge.health().max_batch_size == GUARDED_BATCH
        assert len(bge.embed(INPUTS).vectors) == len(INPUTS)
    assert sizes == [4, 4, 2]
    with Client(guarded.url) as keyless, pytest.raises(AuthenticationError) as raised:
        keyless.embed(["a"])
    assert raised.value.status == 401
    assert "API key is required" in raised.value.message


class _Recording(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, seen: object) -> None:
        self._inner = inner
        self._seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._seen(request)  # type: ignore[operator]
        return self._inner.handle_request(request)


class _Statuses(httpx.AsyncBaseTransport):
    """Counts the statuses the server answered, retries included."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.seen: Counter[int] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        self.seen[response.status_code] += 1
        return response


def test_a_429_storm_is_ridden_out_on_retry_after(guarded: Server) -> None:
    texts = [f"{LONG_TEXT} {i}" for i in range(12)]
    statuses = _Statuses()

    async def storm() -> list[list[float]]:
        async with AsyncClient(
            guarded.url,
            api_key=API_KEY,
            batch_size=1,
            concurrency=len(texts),
            timeout=120,
            transport=statuses,
        ) as bge:
            return (await bge.embed(texts)).vectors

    vectors = asyncio.run(storm())
    assert statuses.seen[429] > 0, statuses.seen
    with Client(guarded.url, api_key=API_KEY, timeout=120) as bge:
        np.testing.assert_allclose(np.array(vectors), bge.embed(texts).vectors, atol=1e-5)


@pytest.mark.parametrize(
    ("space", "who"),
    [
        # Another vocabulary's token ids: refused on /health, before any text is sent.
        (SparseSpace("tokenizer", 250002), "/health reports"),
        # The hash mapping asked for by name, answered in the server's 2^20 space.
        (SparseSpace("hash", 4096), "/v1/sparse-embeddings answered"),
    ],
)
def test_another_sparse_space_is_refused(server: Server, space: SparseSpace, who: str) -> None:
    with (
        Client(server.url, sparse_space=space) as bge,
        pytest.raises(SparseSpaceMismatch, match=who) as raised,
    ):
        bge.sparse(["hello world"])
    assert raised.value.expected == space
    assert "no sparse query would match" in str(raised.value)


def test_a_hash_space_the_server_can_answer_in_is_kept(server: Server) -> None:
    space = SparseSpace("hash", 1_048_576)
    with Client(server.url, sparse_space=space) as bge:
        assert bge.sparse(["hello world"]).space == space
