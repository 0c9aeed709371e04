"""bge-client's own logic through its real httpx stack, the server played by an
``httpx.MockTransport``: batches cut at the server's limit and joined in order, retries
on 429/503 after ``Retry-After`` within one deadline, typed errors with the server's
message, the API key, the sparse space held to, hybrid's ColBERT pruning and integer
formats, and a client that reads no ``/health``."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bge_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConnectionFailedError,
    DeadlineExceededError,
    InvalidRequestError,
    OverloadedError,
    ProtocolError,
    QuantizedHybridVector,
    SparseSpace,
    SparseSpaceMismatch,
    UnavailableError,
)

URL = "http://bge.test"
SPACE = {"sparse_mapping": "tokenizer", "sparse_index_space": 1000}


def health(max_batch_size: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "status": "ok",
        "embedder_loaded": True,
        "reranker_loaded": True,
        "device": "cpu",
        "embedding_model": "BAAI/bge-m3",
        "reranker_model": "BAAI/bge-reranker-v2-m3",
        "routes": {"embed": "flag", "rerank": "flag", "lexical_colbert": "flag"},
        "chains": {},
        "backends": {},
        "max_batch_size": max_batch_size,
        **SPACE,
        **extra,
    }


def vector_of(text: str) -> list[float]:
    """A text's made-up vector: its length and first letter, exact in float16 too."""
    return [float(len(text)), float(ord(text[0]) % 7), 0.5]


def sparse_of(text: str, mapping: str = "tokenizer", space: int = 1000) -> dict[str, Any]:
    return {"indices": [len(text)], "values": [1.0], "mapping": mapping, "index_space": space}


def integers_of(text: str) -> list[int]:
    """A text's made-up integer vector, in every quantized format's range."""
    return [len(text) % 100, ord(text[0]) % 7, 1]


def scale_of(text: str) -> float:
    return len(text) / 1000


QUANTIZED = ("int8", "uint8", "binary", "ubinary")


def usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": n, "total_tokens": n}


@dataclass
class FakeServer:
    """Answers as bge-serve would; ``script`` answers the next requests first."""

    health: dict[str, Any] = field(default_factory=health)
    script: list[Callable[[httpx.Request], httpx.Response]] = field(default_factory=list)
    sent: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)
    headers: list[httpx.Headers] = field(default_factory=list)
    answer_mapping: str | None = None
    answer_space: int = 1000

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.url.path, body))
        self.headers.append(request.headers)
        if request.url.path == "/health":
            return httpx.Response(200, json=self.health)
        if self.script:
            return self.script.pop(0)(request)
        assert body is not None
        return self.answer(request.url.path, body)

    def answer(self, path: str, body: dict[str, Any]) -> httpx.Response:
        texts: list[str] = body.get("input") or body.get("inputs") or body.get("documents") or []
        mapping = self.answer_mapping or body.get("mapping") or "tokenizer"
        if path == "/v1/embeddings":
            wire = body.get("encoding_format", "float")
            data = [
                {"index": i, "embedding": encoded(vector_of(t), wire)} for i, t in enumerate(texts)
            ]
            # Answered out of order: the client puts them back by index.
            return ok({"model": "BAAI/bge-m3", "data": data[::-1], "usage": usage(len(texts))})
        if path == "/v1/sparse-embeddings":
            data = [
                {"index": i, "sparse": sparse_of(t, mapping, self.answer_space)}
                for i, t in enumerate(texts)
            ]
            return ok({"model": "BAAI/bge-m3", "data": data, "usage": usage(len(texts))})
        if path == "/v1/hybrid-embeddings" and body.get("encoding_format") in QUANTIZED:
            return ok(
                {
                    "model": "BAAI/bge-m3",
                    "data": [self.quantized_hybrid(i, t, body) for i, t in enumerate(texts)],
                    "usage": usage(len(texts)),
                }
            )
        if path == "/v1/hybrid-embeddings":
            wire = body.get("encoding_format", "float")
            data = [
                {
                    "index": i,
                    "dense": encoded(vector_of(t), wire),
                    "sparse": sparse_of(t, mapping, self.answer_space),
                    **(
                        {"colbert": [encoded(vector_of(t), wire)]}
                        if body.get("return_colbert")
                        else {}
                    ),
                }
                for i, t in enumerate(texts)
            ]
            return ok({"model": "BAAI/bge-m3", "data": data, "usage": usage(len(texts))})
        if path == "/v1/rerank":
            # Score: the document's length; best first, as the server sorts.
            results = sorted(
                ({"index": i, "relevance_score": len(t) / 100} for i, t in enumerate(texts)),
                key=lambda r: -r["relevance_score"],
            )
            return ok(
                {
                    "id": "x",
                    "model": "BAAI/bge-reranker-v2-m3",
                    "results": results,
                    "usage": usage(1),
                }
            )
        if path == "/v1/m3-score":
            results = [
                {
                    "index": i,
                    "dense": len(t),
                    "sparse": 0.0,
                    "colbert": 1.0,
                    "sparse+dense": None,
                    "colbert+sparse+dense": 0.5,
                }
                for i, t in enumerate(texts)
            ]
            return ok(
                {
                    "model": "BAAI/bge-m3",
                    "results": results,
                    "weights": [0.4, 0.2, 0.4],
                    "usage": usage(1),
                }
            )
        if path == "/tokenize":
            rows = [
                [{"id": len(t), "text": t, "special": False, "start": 0, "stop": len(t)}]
                for t in texts
            ]
            return ok(rows)
        raise AssertionError(f"unexpected {path}")

    def quantized_hybrid(self, index: int, text: str, body: dict[str, Any]) -> dict[str, Any]:
        scaled = body["encoding_format"] in ("int8", "uint8")
        item: dict[str, Any] = {
            "index": index,
            "dense": integers_of(text),
            "sparse": sparse_of(text, body.get("mapping") or "tokenizer", self.answer_space),
        }
        if scaled:
            item["dense_scale"] = scale_of(text)
        if body.get("return_colbert"):
            # One row per letter, cut to colbert_max_tokens as the server prunes.
            rows = [integers_of(text[i:]) for i in range(len(text))]
            rows = rows[: body.get("colbert_max_tokens") or len(rows)]
            item["colbert"] = rows
            if scaled:
                item["colbert_scales"] = [scale_of(text)] * len(rows)
        return item

    def posted(self) -> list[dict[str, Any]]:
        return [body for path, body in self.sent if path != "/health" and body is not None]


def encoded(vector: list[float], wire: str) -> list[float] | str:
    if wire == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    if wire == "float16":
        return base64.b64encode(struct.pack(f"<{len(vector)}e", *vector)).decode()
    return vector


def ok(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body)


def refused(status: int, retry_after: str | None = "0", message: str = "busy") -> Any:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    body = {"error": {"message": message, "type": "x", "param": None, "code": "overloaded"}}
    return lambda request: httpx.Response(status, json=body, headers=headers)


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(fake: FakeServer) -> Iterator[Client]:
    with Client(URL, transport=httpx.MockTransport(fake), timeout=5) as bge:
        yield bge


TEXTS = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff", "g"]


# --- Batching -------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", ["float", "base64", "float16"])
def test_embed_batches_at_the_servers_limit_in_order(
    client: Client, fake: FakeServer, wire: Any
) -> None:
    result = client.embed(TEXTS, encoding_format=wire)
    assert [len(body["input"]) for body in fake.posted()] == [3, 3, 1]
    assert result.vectors == [vector_of(t) for t in TEXTS]
    assert result.usage.prompt_tokens == len(TEXTS)
    # /health is read once, not per call.
    client.embed(TEXTS[:1])
    assert [path for path, _ in fake.sent].count("/health") == 1


def test_batch_size_below_the_servers(fake: FakeServer) -> None:
    with Client(URL, transport=httpx.MockTransport(fake), batch_size=2) as bge:
        bge.sparse(TEXTS)
    assert [len(body["input"]) for body in fake.posted()] == [2, 2, 2, 1]


def test_batch_size_above_the_servers_is_the_servers(fake: FakeServer) -> None:
    with Client(URL, transport=httpx.MockTransport(fake), batch_size=100) as bge:
        bge.embed(TEXTS)
    assert [len(body["input"]) for body in fake.posted()] == [3, 3, 1]


def test_rerank_over_batches_is_one_ranking(client: Client, fake: FakeServer) -> None:
    documents = ["xx", "x", "xxxxx", "xxx", "xxxx", "xxxxxx", "y"]
    ranking = client.rerank("q", documents, top_n=3)
    assert [body["top_n"] for body in fake.posted()] == [3, 3, 1]
    assert [(r.index, r.document) for r in ranking.results] == [
        (5, "xxxxxx"),
        (2, "xxxxx"),
        (4, "xxxx"),
    ]
    assert len(client.rerank("q", documents).results) == len(documents)


def test_m3_score_over_batches_keeps_the_documents_order(client: Client) -> None:
    scores = client.m3_score("q", TEXTS)
    assert [s.index for s in scores.results] == list(range(len(TEXTS)))
    assert [s.dense for s in scores.results] == [len(t) for t in TEXTS]
    assert scores.weights == (0.4, 0.2, 0.4)
    assert scores.results[0].sparse_dense is None


def test_hybrid_and_tokenize(client: Client) -> None:
    hybrid = client.hybrid(TEXTS, colbert=True)
    assert [v.dense for v in hybrid.vectors] == [vector_of(t) for t in TEXTS]
    assert [v.colbert for v in hybrid.vectors] == [[vector_of(t)] for t in TEXTS]
    assert hybrid.space == SparseSpace("tokenizer", 1000)
    tokens = client.tokenize(TEXTS)
    assert [row[0].text for row in tokens] == TEXTS


def test_a_bare_string_is_refused(client: Client) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        client.embed("hello")  # type: ignore[arg-type]  # the mistake under test


def test_no_texts_asks_nothing(client: Client, fake: FakeServer) -> None:
    assert client.embed([]).vectors == []
    assert fake.posted() == []


# --- Retries and the deadline --------------------------------------------------------------


def test_429_is_retried_after_retry_after(client: Client, fake: FakeServer) -> None:
    fake.script = [refused(429), refused(503)]
    assert client.embed(["a"]).vectors == [vector_of("a")]
    assert len(fake.posted()) == 3


def test_retries_stop_at_the_deadline_with_the_servers_message(fake: FakeServer) -> None:
    fake.script = [refused(429, "0", "256 requests are queued")] * 1000
    began = time.monotonic()
    with (
        Client(URL, transport=httpx.MockTransport(fake), timeout=0.5) as bge,
        pytest.raises(OverloadedError) as raised,
    ):
        bge.embed(["a"])
    assert time.monotonic() - began < 1.5
    assert raised.value.status == 429
    assert raised.value.message == "256 requests are queued"
    assert len(fake.posted()) > 2


def test_a_wait_past_the_deadline_is_not_waited_for(fake: FakeServer) -> None:
    fake.script = [refused(503, "20", "the models are still loading")]
    began = time.monotonic()
    with (
        Client(URL, transport=httpx.MockTransport(fake), timeout=2) as bge,
        pytest.raises(UnavailableError, match="still loading"),
    ):
        bge.embed(["a"])
    assert time.monotonic() - began < 1


def test_a_request_error_is_not_retried(client: Client, fake: FakeServer) -> None:
    body = {
        "error": {
            "message": "`input[0]` is empty or whitespace",
            "type": "invalid_request_error",
            "param": "input[0]",
            "code": "invalid_input",
        }
    }
    fake.script = [lambda request: httpx.Response(422, json=body)]
    with pytest.raises(InvalidRequestError) as raised:
        client.embed([" "])
    assert (raised.value.status, raised.value.param) == (422, "input[0]")
    assert "/v1/embeddings answered 422: `input[0]` is empty" in str(raised.value)
    assert len(fake.posted()) == 1


def test_teis_error_body_is_read(client: Client, fake: FakeServer) -> None:
    body = {"error": "`prompt_name`: bge-m3 has no prompts", "error_type": "Validation"}
    fake.script = [lambda request: httpx.Response(422, json=body)]
    with pytest.raises(InvalidRequestError) as raised:
        client.tokenize(["a"])
    assert raised.value.message == "`prompt_name`: bge-m3 has no prompts"
    assert raised.value.code == "Validation"


def test_a_dropped_connection_is_retried(client: Client, fake: FakeServer) -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("server disconnected", request=request)

    fake.script = [drop]
    assert client.embed(["a"]).vectors == [vector_of("a")]


def test_an_unreachable_server_is_given_up_on_at_the_deadline() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        Client(URL, transport=httpx.MockTransport(refuse), timeout=0.6) as bge,
        pytest.raises(ConnectionFailedError, match="could not be reached on /health"),
    ):
        bge.embed(["a"])


def test_a_hung_server_is_a_deadline_error() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with (
        Client(URL, transport=httpx.MockTransport(hang), timeout=0.5) as bge,
        pytest.raises(DeadlineExceededError),
    ):
        bge.health()


def test_a_body_no_bge_serve_sends(client: Client, fake: FakeServer) -> None:
    fake.script = [lambda request: ok({"object": "list"})]
    with pytest.raises(ProtocolError, match="a body no bge-serve sends"):
        client.embed(["a"])


# --- The API key ------------------------------------------------------------------------------


def test_the_api_key_is_sent_as_bearer(fake: FakeServer) -> None:
    with Client(URL, api_key="sk-test", transport=httpx.MockTransport(fake)) as bge:
        bge.embed(["a"])
    assert {h["authorization"] for h in fake.headers} == {"Bearer sk-test"}


def test_a_refused_key_is_an_authentication_error(client: Client, fake: FakeServer) -> None:
    fake.script = [refused(401, None, "the API key is not valid")]
    with pytest.raises(AuthenticationError, match="the API key is not valid"):
        client.embed(["a"])


# --- The sparse space -------------------------------------------------------------------------


def test_the_servers_space_is_adopted_then_held(client: Client, fake: FakeServer) -> None:
    assert client.sparse(["a"]).space == SparseSpace("tokenizer", 1000)
    # Asked for by name from then on, so a server's default changing does not move it.
    assert fake.posted()[-1]["mapping"] == "tokenizer"
    fake.answer_space = 2000  # e.g. restarted with another model
    with pytest.raises(SparseSpaceMismatch) as raised:
        client.sparse(["a"])
    assert raised.value.expected == SparseSpace("tokenizer", 1000)
    assert raised.value.got == SparseSpace("tokenizer", 2000)
    assert "no sparse query would match" in str(raised.value)


def test_a_given_space_is_asked_for(fake: FakeServer) -> None:
    fake.answer_space = 4096
    space = SparseSpace("hash", 4096)
    with Client(URL, sparse_space=space, transport=httpx.MockTransport(fake)) as bge:
        assert bge.hybrid(["a"]).space == space
    assert fake.posted()[-1]["mapping"] == "hash"


def test_a_server_in_the_same_mapping_but_another_space_is_refused_up_front(
    fake: FakeServer,
) -> None:
    space = SparseSpace("tokenizer", 250002)
    with (
        Client(URL, sparse_space=space, transport=httpx.MockTransport(fake)) as bge,
        pytest.raises(SparseSpaceMismatch, match="/health reports"),
    ):
        bge.sparse_space()
    assert fake.posted() == []


# --- Async -----------------------------------------------------------------------------------


def test_async_client_batches_retries_and_joins_in_order(fake: FakeServer) -> None:
    bge = AsyncClient(URL, transport=httpx.MockTransport(fake), concurrency=2, timeout=5)

    async def run() -> Any:
        fake.script = [refused(429)]
        dense = await bge.embed(TEXTS)
        ranking = await bge.rerank("q", TEXTS, top_n=2)
        return dense, ranking

    dense, ranking = asyncio.run(run())
    assert dense.vectors == [vector_of(t) for t in TEXTS]
    assert [r.index for r in ranking.results] == [5, 4]
    # A second event loop gets connections of its own.
    assert asyncio.run(bge.sparse(TEXTS)).space == SparseSpace("tokenizer", 1000)


def test_async_deadline(fake: FakeServer) -> None:
    fake.script = [refused(429)] * 1000

    async def run() -> None:
        async with AsyncClient(URL, transport=httpx.MockTransport(fake), timeout=0.4) as bge:
            await bge.embed(["a"])

    with pytest.raises(OverloadedError):
        asyncio.run(run())


def test_imports_without_the_servers_stack() -> None:
    code = (
        "import sys, bge_client; "
        "loaded = {m.split('.')[0] for m in sys.modules}; "
        "print(sorted(loaded & {'torch', 'litestar', 'numpy', 'engine', 'api', 'transformers'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_reference_page_is_the_docstrings() -> None:
    from bge_client._reference import rewrite

    page = Path(__file__).resolve().parents[2] / "docs" / "clients" / "python.md"
    text = page.read_text(encoding="utf-8")
    assert rewrite(text) == text, (
        "docs/clients/python.md's reference is stale: "
        "python -m bge_client._reference docs/clients/python.md"
    )


# --- Hybrid: ColBERT pruning and the integer formats ------------------------------------------


def test_hybrid_sends_colbert_max_tokens(client: Client, fake: FakeServer) -> None:
    hybrid = client.hybrid(TEXTS[:2], colbert=True, colbert_max_tokens=4, encoding_format="float16")
    assert fake.posted()[-1] == {
        "input": TEXTS[:2],
        "mapping": "tokenizer",
        "return_colbert": True,
        "colbert_max_tokens": 4,
        "encoding_format": "float16",
    }
    assert [v.colbert for v in hybrid.vectors] == [[vector_of(t)] for t in TEXTS[:2]]
    # Left out where not given: the server keeps every row.
    client.hybrid(TEXTS[:1], colbert=True)
    assert "colbert_max_tokens" not in fake.posted()[-1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colbert_max_tokens": 4}, "pass `colbert=True` with it"),
        ({"colbert": True, "colbert_max_tokens": 0}, "at least 1"),
    ],
)
def test_a_pruning_the_server_would_refuse_is_refused_before_sending(
    client: Client, fake: FakeServer, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        client.hybrid(["a"], **options)
    with pytest.raises(ValueError, match=message):
        client.hybrid_quantized(["a"], "int8", **options)
    assert fake.posted() == []


@pytest.mark.parametrize("form", ["int8", "uint8"])
def test_hybrid_quantized_keeps_every_vectors_scale(
    client: Client, fake: FakeServer, form: Any
) -> None:
    result = client.hybrid_quantized(TEXTS, form, colbert=True, colbert_max_tokens=2)
    assert [len(body["input"]) for body in fake.posted()] == [3, 3, 1]
    assert fake.posted()[0]["encoding_format"] == form
    assert fake.posted()[0]["colbert_max_tokens"] == 2
    assert result.format == form
    assert result.space == SparseSpace("tokenizer", 1000)
    assert result.usage.prompt_tokens == len(TEXTS)
    for text, vector in zip(TEXTS, result.vectors, strict=True):
        rows = [integers_of(text[i:]) for i in range(len(text))][:2]
        assert vector == QuantizedHybridVector(
            dense=integers_of(text),
            sparse=vector.sparse,
            dense_scale=scale_of(text),
            colbert=rows,
            colbert_scales=[scale_of(text)] * len(rows),
        )
        assert vector.sparse.indices == [len(text)]


def test_hybrid_quantized_bits_have_no_scales_and_colbert_only_when_asked(client: Client) -> None:
    result = client.hybrid_quantized(TEXTS[:2], "ubinary")
    assert [(v.dense, v.dense_scale, v.colbert, v.colbert_scales) for v in result.vectors] == [
        (integers_of(t), None, None, None) for t in TEXTS[:2]
    ]


def test_hybrid_quantized_without_a_scale_is_a_protocol_error(
    client: Client, fake: FakeServer
) -> None:
    def unscaled(request: httpx.Request) -> httpx.Response:
        item = fake.quantized_hybrid(0, "a", json.loads(request.content))
        del item["colbert_scales"]
        return ok({"model": "BAAI/bge-m3", "data": [item], "usage": usage(1)})

    fake.script = [unscaled]
    with pytest.raises(ProtocolError, match="int8 without a scale for every vector"):
        client.hybrid_quantized(["a"], "int8", colbert=True)


def test_async_hybrid_quantized_and_pruning(fake: FakeServer) -> None:
    async def run() -> Any:
        async with AsyncClient(URL, transport=httpx.MockTransport(fake), concurrency=2) as bge:
            pruned = await bge.hybrid(TEXTS, colbert=True, colbert_max_tokens=1)
            return pruned, await bge.hybrid_quantized(TEXTS, "uint8", colbert=True)

    pruned, quantized = asyncio.run(run())
    assert [v.dense for v in pruned.vectors] == [vector_of(t) for t in TEXTS]
    assert {body["colbert_max_tokens"] for body in fake.posted()[:3]} == {1}
    assert [v.colbert for v in quantized.vectors] == [
        [integers_of(t[i:]) for i in range(len(t))] for t in TEXTS
    ]


# --- A client that reads no /health --------------------------------------------------------


def test_a_client_that_reads_no_health_sends_each_call_as_it_comes(fake: FakeServer) -> None:
    transport = httpx.MockTransport(fake)
    with Client(URL, read_health=False, transport=transport) as bge:
        result = bge.hybrid(TEXTS)
        # The space of the first answer, asked for by name from then on.
        assert result.space == SparseSpace("tokenizer", 1000)
        assert bge.sparse_space() == SparseSpace("tokenizer", 1000)
        bge.sparse(TEXTS[:1])
    assert [path for path, _ in fake.sent] == ["/v1/hybrid-embeddings", "/v1/sparse-embeddings"]
    # One request of all seven texts, over the server's limit of 3: the caller's to cut.
    assert [len(body["input"]) for body in fake.posted()] == [7, 1]
    assert "mapping" not in fake.posted()[0]
    assert fake.posted()[1]["mapping"] == "tokenizer"
    with Client(URL, read_health=False, batch_size=2, transport=transport) as bge:
        bge.embed(TEXTS)
    assert [len(body["input"]) for body in fake.posted()[2:]] == [2, 2, 2, 1]


def test_a_client_that_reads_no_health_refuses_another_space(fake: FakeServer) -> None:
    with Client(URL, read_health=False, transport=httpx.MockTransport(fake)) as bge:
        bge.sparse(["a"])
        fake.answer_space = 2000
        with pytest.raises(SparseSpaceMismatch, match="/v1/sparse-embeddings answered"):
            bge.sparse(["a"])


def test_a_client_that_reads_no_health_reads_it_for_what_only_it_says(fake: FakeServer) -> None:
    with Client(URL, read_health=False, transport=httpx.MockTransport(fake)) as bge:
        # No texts: the model's name and the space come from /health.
        empty = bge.hybrid([])
        assert (empty.model, empty.space, empty.vectors) == (
            "BAAI/bge-m3",
            SparseSpace("tokenizer", 1000),
            [],
        )
    with Client(URL, read_health=False, transport=httpx.MockTransport(fake)) as bge:
        assert bge.sparse_space() == SparseSpace("tokenizer", 1000)
    assert [path for path, _ in fake.sent] == ["/health", "/health"]


def test_a_hung_call_is_named_by_its_route() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with (
        Client(URL, read_health=False, transport=httpx.MockTransport(hang), timeout=0.3) as bge,
        pytest.raises(DeadlineExceededError) as raised,
    ):
        bge.hybrid(["a"])
    assert raised.value.route == "/v1/hybrid-embeddings"


# --- /health as a probe --------------------------------------------------------------------


def test_health_without_retries_says_an_unreachable_server_at_once() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    began = time.monotonic()
    with (
        Client(URL, transport=httpx.MockTransport(refuse), timeout=5) as bge,
        pytest.raises(ConnectionFailedError, match="not retried") as raised,
    ):
        bge.health(retry=False)
    assert time.monotonic() - began < 1
    assert raised.value.route == "/health"
    assert isinstance(raised.value.__cause__, httpx.ConnectError)


def test_health_without_retries_answers_a_loading_server(fake: FakeServer) -> None:
    fake.health = health(status="loading")

    async def run() -> Any:
        async with AsyncClient(URL, transport=httpx.MockTransport(fake)) as bge:
            return await bge.health(retry=False)

    assert asyncio.run(run()).status == "loading"
