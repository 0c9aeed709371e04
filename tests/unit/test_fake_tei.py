"""The fake TEI keeps TEI 1.9.3's contract, through respx and through its loopback server.

Tests of the remote backend trust the fake's answers, so here every answer it gives is checked
against TEI's published OpenAPI, and every injected fault against what it promises.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
import respx
from jsonschema.exceptions import ValidationError

from tests.contract import response_schema, validate, validate_request, validate_response
from tests.fake_tei import FakeTEI, Fault, serve

Connect = Callable[[FakeTEI], httpx.Client]

HOST = "tei.test"
TEXTS = ["the quick brown fox", "jumps over", "the lazy dog tonight"]
QUERY = "which animal is quick"
# Every client shares one TLS context: building one per client costs ~50 ms and no test uses TLS.
TLS = ssl.create_default_context()


@pytest.fixture(params=["respx", "server"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """A client bound to a fake: mounted with respx, or over a real socket to its server."""
    with ExitStack() as stack:
        router = stack.enter_context(respx.mock(assert_all_called=False))
        if request.param == "server":
            # Loopback traffic must reach the real server, not the mock.
            router.route(host="127.0.0.1").pass_through()

        def bind(fake: FakeTEI) -> httpx.Client:
            if request.param == "respx":
                # One host per fake, so a test can talk to several.
                host = f"tei-{len(router.routes)}.test"
                router.route(host=host).mock(side_effect=fake.respx_side_effect)
                base_url = f"http://{host}"
            else:
                base_url = stack.enter_context(serve(fake))
            return stack.enter_context(httpx.Client(base_url=base_url, timeout=5, verify=TLS))

        yield bind


def conforms(response: httpx.Response) -> Any:
    """The parsed body, once it is checked against TEI's contract for its route and status."""
    body = response.json() if response.content else None
    validate_response(
        "tei", response.request.method, response.request.url.path, response.status_code, body
    )
    return body


def tokenized_count(client: httpx.Client, texts: list[str]) -> int:
    rows = conforms(client.post("/tokenize", json={"inputs": texts}))
    return sum(len(row) for row in rows)


# ---- the contract module ---------------------------------------------------------------------


def test_contract_allows_openapi_nullable_and_rejects_wrong_case_error_type() -> None:
    validate("tei", "Rank", {"index": 0, "score": 0.5, "text": None})
    validate("tei", "EmbedRequest", {"inputs": "a", "truncate": None, "dimensions": None})
    validate("tei", "ErrorResponse", {"error": "x", "error_type": "Backend"})
    with pytest.raises(ValidationError, match="tei ErrorResponse"):
        # The document's own examples spell error types in lower case; the enum does not.
        validate("tei", "ErrorResponse", {"error": "x", "error_type": "backend"})
    with pytest.raises(ValidationError):
        validate("tei", "Rank", {"index": None, "score": 0.5})


def test_contract_resolves_references_and_rejects_unknown_names() -> None:
    assert response_schema("tei", "POST", "/embed", 200) == {
        "$ref": "#/components/schemas/EmbedResponse"
    }
    assert response_schema("tei", "GET", "/health", 200) == {"type": "null"}
    validate_response("tei", "GET", "/health", 200, None)
    with pytest.raises(ValidationError):
        validate_response("tei", "POST", "/embed", 200, {"embeddings": [[0.0]]})
    with pytest.raises(AssertionError, match="no 424 response"):
        validate_response("tei", "POST", "/tokenize", 424, {"error": "x", "error_type": "Backend"})
    with pytest.raises(AssertionError, match="no schema"):
        validate("tei", "Nope", {})
    with pytest.raises(AssertionError, match="no path"):
        response_schema("tei", "GET", "/nope", 200)


def test_contract_reads_infinity_as_openapi_3_1() -> None:
    validate("infinity", "RerankInput", {"query": "q", "documents": ["a"], "top_n": None})
    with pytest.raises(ValidationError):
        validate("infinity", "RerankInput", {"query": "q", "documents": []})
    validate_request("infinity", "POST", "/embeddings", {"input": ["a"], "modality": "text"})
    with pytest.raises(ValidationError, match="valid under each of"):
        # Without `modality` a text request also fits the audio and image schemas of the oneOf.
        validate_request("infinity", "POST", "/embeddings", {"input": ["a"]})


# ---- routes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "model_type"),
    [
        ("embedding", {"embedding": {"pooling": "cls"}}),
        ("splade", {"embedding": {"pooling": "splade"}}),
        ("reranker", {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}),
    ],
)
def test_info_and_health(connect: Connect, kind: Any, model_type: dict[str, Any]) -> None:
    fake = FakeTEI(kind=kind, max_client_batch_size=7, max_input_length=64)
    client = connect(fake)
    info = conforms(client.get("/info"))
    validate("tei", "Info", info)
    assert info["model_type"] == model_type
    assert info["max_client_batch_size"] == 7
    assert info["max_input_length"] == 64
    assert info["version"] == "1.9.3"
    health = client.get("/health")
    assert health.status_code == 200
    assert health.content == b""
    conforms(health)
    assert fake.answers_by_path == {"/info": 1, "/health": 1}


def test_embed_answers_the_deterministic_vectors(connect: Connect) -> None:
    fake = FakeTEI(dimension=8)
    client = connect(fake)
    response = client.post("/embed", json={"inputs": TEXTS, "truncate": True, "normalize": True})
    vectors = conforms(response)
    assert vectors == [fake.vector(text) for text in TEXTS]
    assert all(math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-6) for vector in vectors)
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["x-compute-tokens"]) == tokenized_count(client, TEXTS)

    single = conforms(client.post("/embed", json={"inputs": "one text"}))
    assert single == [fake.vector("one text")]
    raw = conforms(client.post("/embed", json={"inputs": ["x y"], "normalize": False}))
    assert raw == [fake.vector("x y", normalize=False)]
    assert math.hypot(*raw[0]) > 1.5
    short = conforms(client.post("/embed", json={"inputs": ["x y"], "dimensions": 4}))
    assert short == [fake.vector("x y", dimensions=4)]
    assert len(short[0]) == 4
    assert fake.contract_violations == []
    assert fake.answers_by_path["/embed"] == 4


def test_batch_limit_is_413_in_tei_words(connect: Connect) -> None:
    fake = FakeTEI(max_client_batch_size=2)
    client = connect(fake)
    response = client.post("/embed", json={"inputs": TEXTS})
    assert response.status_code == 413
    assert conforms(response) == {
        "error": "batch size 3 > maximum allowed batch size 2",
        "error_type": "Validation",
    }
    assert conforms(client.post("/tokenize", json={"inputs": TEXTS}))["error_type"] == "Validation"
    reranker = FakeTEI(kind="reranker", max_client_batch_size=2)
    rerank = connect(reranker).post("/rerank", json={"query": QUERY, "texts": TEXTS})
    assert rerank.status_code == 413
    assert conforms(rerank)["error"] == "batch size 3 > maximum allowed batch size 2"
    assert fake.answers_by_path["/embed"] == 0


def test_empty_batch_is_400(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    response = client.post("/embed", json={"inputs": []})
    assert response.status_code == 400
    assert conforms(response) == {"error": "Batch is empty", "error_type": "Empty"}
    # TEI's Input schema is a oneOf that an empty list fits twice: the contract refuses it.
    assert len(fake.contract_violations) == 1
    assert "valid under each of" in fake.contract_violations[0]


def test_over_long_input_is_413_unless_truncated(connect: Connect) -> None:
    fake = FakeTEI(max_input_length=4)
    client = connect(fake)
    long_text = "one two three four five six"
    refused = client.post("/embed", json={"inputs": [long_text]})
    assert refused.status_code == 413
    assert conforms(refused)["error_type"] == "Validation"
    truncated = client.post("/embed", json={"inputs": [long_text], "truncate": True})
    assert conforms(truncated) == [fake.vector(long_text)]
    assert truncated.headers["x-compute-tokens"] == "4"


def test_sparse_on_a_splade_model(connect: Connect) -> None:
    fake = FakeTEI(kind="splade")
    client = connect(fake)
    response = client.post("/embed_sparse", json={"inputs": TEXTS})
    rows = conforms(response)
    assert rows == [
        [{"index": index, "value": value} for index, value in fake.sparse(text)] for text in TEXTS
    ]
    for row in rows:
        indices = [entry["index"] for entry in row]
        assert indices == sorted(set(indices))
        assert all(entry["value"] > 0 for entry in row)
    assert int(response.headers["x-compute-tokens"]) == tokenized_count(client, TEXTS)
    dense = client.post("/embed", json={"inputs": TEXTS})
    assert dense.status_code == 424
    assert conforms(dense)["error_type"] == "Backend"


@pytest.mark.parametrize("kind", ["embedding", "reranker"])
def test_sparse_elsewhere_is_424(connect: Connect, kind: Any) -> None:
    response = connect(FakeTEI(kind=kind)).post("/embed_sparse", json={"inputs": TEXTS})
    assert response.status_code == 424
    assert conforms(response) == {
        "error": "`/embed_sparse` is only available for SPLADE models",
        "error_type": "Backend",
    }


@pytest.mark.parametrize("raw_scores", [True, False])
def test_rerank_sorted_by_score(connect: Connect, raw_scores: bool) -> None:
    fake = FakeTEI(kind="reranker")
    client = connect(fake)
    texts = [f"document number {n} about foxes" for n in range(6)]
    body = {"query": QUERY, "texts": texts, "raw_scores": raw_scores, "truncate": False}
    response = client.post("/rerank", json=body)
    ranks = conforms(response)
    scores = [rank["score"] for rank in ranks]
    assert scores == sorted(scores, reverse=True)
    assert sorted(rank["index"] for rank in ranks) == list(range(len(texts)))
    for rank in ranks:
        text = texts[rank["index"]]
        assert rank["score"] == fake.score(QUERY, text, raw_scores)
        assert "text" not in rank
    if raw_scores:
        assert any(score < 0 or score > 1 for score in scores)
    else:
        assert all(0 < score < 1 for score in scores)
        assert ranks[0]["score"] == pytest.approx(1 / (1 + math.exp(-fake.logit(QUERY, texts[0]))))
    pairs = sum(tokenized_count(client, [QUERY, text]) for text in texts)
    assert int(response.headers["x-compute-tokens"]) == pairs

    with_text = conforms(client.post("/rerank", json={**body, "return_text": True}))
    assert all(rank["text"] == texts[rank["index"]] for rank in with_text)
    assert fake.contract_violations == []


@pytest.mark.parametrize("kind", ["embedding", "splade"])
def test_rerank_elsewhere_is_424(connect: Connect, kind: Any) -> None:
    response = connect(FakeTEI(kind=kind)).post("/rerank", json={"query": "q", "texts": ["a"]})
    assert response.status_code == 424
    assert conforms(response)["error_type"] == "Backend"


def test_tokenize(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    response = client.post("/tokenize", json={"inputs": ["hello  big world"]})
    [tokens] = conforms(response)
    assert [token["text"] for token in tokens] == ["<s>", "hello", "big", "world", "</s>"]
    assert [token["special"] for token in tokens] == [True, False, False, False, True]
    assert (tokens[0]["start"], tokens[0]["stop"]) == (None, None)
    assert (tokens[2]["start"], tokens[2]["stop"]) == (7, 10)
    assert all(5 <= token["id"] < 1000 for token in tokens[1:-1])
    assert tokens == fake.tokens("hello  big world")
    # TEI's /tokenize carries none of the x-compute-* headers the model routes carry.
    assert "x-compute-tokens" not in response.headers
    bare = conforms(client.post("/tokenize", json={"inputs": "a b", "add_special_tokens": False}))
    assert [token["text"] for token in bare[0]] == ["a", "b"]


def test_bodies_tei_would_refuse(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    not_json = client.post("/embed", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    assert conforms(not_json)["error_type"] == "Validation"
    no_type = client.post("/embed", content=b'{"inputs": "a"}')
    assert no_type.status_code == 415
    assert client.get("/embed").status_code == 405
    assert client.post("/predict", json={"inputs": "a"}).status_code == 404
    assert len(fake.contract_violations) == 2
    assert fake.answers_by_path["/embed"] == 0


def test_records_requests(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    client.post("/embed", json={"inputs": ["a"]}, headers={"X-Request-Id": "r1"})
    [recorded] = fake.requests
    assert (recorded.method, recorded.path) == ("POST", "/embed")
    assert recorded.json == {"inputs": ["a"]}
    assert recorded.headers["x-request-id"] == "r1"
    assert recorded.headers["content-type"] == "application/json"


# ---- faults ----------------------------------------------------------------------------------


def test_status_fault_with_retry_after(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    fake.faults.append(Fault.status(429, message="Model is overloaded", retry_after=3))
    response = client.post("/embed", json={"inputs": ["a"]})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert conforms(response) == {"error": "Model is overloaded", "error_type": "Overloaded"}
    assert fake.answers_by_path["/embed"] == 0
    assert client.post("/embed", json={"inputs": ["a"]}).status_code == 200
    assert fake.answers_by_path["/embed"] == 1


def test_faults_are_consumed_in_order_then_answers_resume(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    fake.faults.extend([Fault.malformed(), Fault.short(), Fault.wrong_shape()])
    malformed = client.post("/embed", json={"inputs": TEXTS})
    assert malformed.status_code == 200
    assert malformed.content == b'{"not json'
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    short = client.post("/embed", json={"inputs": TEXTS})
    assert short.json() == [fake.vector(text) for text in TEXTS[:-1]]
    wrong = client.post("/embed", json={"inputs": TEXTS})
    assert wrong.json() == {"embeddings": [fake.vector(text) for text in TEXTS]}
    with pytest.raises(ValidationError):
        conforms(wrong)
    assert conforms(client.post("/embed", json={"inputs": TEXTS})) == [
        fake.vector(text) for text in TEXTS
    ]
    assert fake.faults == []
    assert fake.answers_by_path["/embed"] == 1


def test_short_answers_on_every_route(connect: Connect) -> None:
    splade, reranker = FakeTEI(kind="splade"), FakeTEI(kind="reranker")
    splade.fault = Fault.short()
    reranker.fault = Fault.short()
    assert len(connect(splade).post("/embed_sparse", json={"inputs": TEXTS}).json()) == 2
    assert len(connect(reranker).post("/rerank", json={"query": "q", "texts": TEXTS}).json()) == 2


def test_sticky_fault_hits_every_post_but_not_get(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    fake.fault = Fault.status(424, message="Inference failed")
    for _ in range(3):
        response = client.post("/embed", json={"inputs": ["a"]})
        assert response.status_code == 424
        assert conforms(response)["error_type"] == "Backend"
    assert client.get("/info").status_code == 200
    fake.fault = None
    assert client.post("/embed", json={"inputs": ["a"]}).status_code == 200


def test_drop_fault(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    fake.faults.append(Fault.drop())
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/embed", json={"inputs": ["a"]})
    assert conforms(client.post("/embed", json={"inputs": ["a"]})) == [fake.vector("a")]


def test_delay(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    fake.delay_s = 0.1
    started = time.monotonic()
    assert client.post("/embed", json={"inputs": ["a"]}).status_code == 200
    assert time.monotonic() - started >= 0.1
    started = time.monotonic()
    client.get("/health")
    assert time.monotonic() - started < 0.1


def test_unknown_status_fault_needs_an_error_type() -> None:
    with pytest.raises(ValueError, match="name one"):
        Fault.status(502)
    assert Fault.status(502, "Backend").error_type == "Backend"


# ---- transports ------------------------------------------------------------------------------


def test_respx_async_side_effect() -> None:
    fake = FakeTEI()

    async def scenario() -> None:
        with respx.mock(assert_all_called=False) as router:
            router.route(host=HOST).mock(side_effect=fake.respx_async_side_effect)
            async with httpx.AsyncClient(base_url=f"http://{HOST}", verify=TLS) as client:
                response = await client.post("/embed", json={"inputs": "a"})
                assert conforms(response) == [fake.vector("a")]
                fake.faults.append(Fault.drop())
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.post("/embed", json={"inputs": "a"})

    asyncio.run(scenario())
    assert fake.answers_by_path["/embed"] == 1


def test_server_keeps_connections_alive_with_content_length() -> None:
    fake = FakeTEI()
    with serve(fake) as url:
        port = int(url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            for path in ["/health", "/info"]:
                connection.request("GET", path)
                response = connection.getresponse()
                assert response.version == 11
                assert response.getheader("content-length") is not None
                response.read()
                assert not response.will_close
            body = json.dumps({"inputs": ["a"]})
            connection.request("POST", "/embed", body, {"content-type": "application/json"})
            assert json.loads(connection.getresponse().read()) == [fake.vector("a")]
        finally:
            connection.close()


def test_server_answers_concurrent_clients_and_shuts_down() -> None:
    fake = FakeTEI()
    fake.delay_s = 0.05
    with serve(fake) as url, httpx.Client(base_url=url, timeout=5, verify=TLS) as client:
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(
                pool.map(
                    lambda n: client.post("/embed", json={"inputs": [f"text {n}"]}).status_code,
                    range(16),
                )
            )
        assert statuses == [200] * 16
    assert len(fake.requests) == 16
    assert fake.answers_by_path["/embed"] == 16
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=1, verify=TLS)
