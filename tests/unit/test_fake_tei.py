"""The fake TEI keeps TEI 1.9.3's behaviour, through respx and through its loopback server.

Tests of the remote backend trust the fake's answers, so here each of the checks TEI's router
makes (router/src/http/server.rs, core/src/infer.rs, core/src/tokenization.rs, as the fake's
comments cite them) is asserted with TEI's status and words, every JSON answer is checked
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
        (
            "classifier",
            {
                "classifier": {
                    "id2label": {"0": "NEGATIVE", "1": "POSITIVE"},
                    "label2id": {"NEGATIVE": 0, "POSITIVE": 1},
                }
            },
        ),
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
    assert (info["max_concurrent_requests"], info["auto_truncate"]) == (512, True)
    assert info["version"] == "1.9.3"
    health = client.get("/health")
    assert health.status_code == 200
    assert health.content == b""
    conforms(health)
    assert fake.answers_by_path == {"/info": 1, "/health": 1}
    # server.rs, run: GET / and GET /ping (SageMaker's) are the same health check.
    for path in ("/", "/ping"):
        assert (client.get(path).status_code, client.get(path).content) == (200, b"")
    fake.healthy = False
    unhealthy = client.get("/health")
    assert unhealthy.status_code == 503
    assert conforms(unhealthy) == {"error": "unhealthy", "error_type": "Unhealthy"}
    assert client.get("/ping").status_code == 503


def test_embed_answers_the_deterministic_vectors(connect: Connect) -> None:
    fake = FakeTEI(dimension=8)
    client = connect(fake)
    response = client.post("/embed", json={"inputs": TEXTS, "truncate": True, "normalize": True})
    vectors = conforms(response)
    assert vectors == [fake.vector(text) for text in TEXTS]
    assert all(math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-6) for vector in vectors)
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["x-compute-tokens"]) == tokenized_count(client, TEXTS)
    assert int(response.headers["x-compute-characters"]) == sum(len(t) for t in TEXTS)

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


def _batch(path: str, size: int) -> dict[str, Any]:
    texts = [f"text {n}" for n in range(size)]
    if path == "/rerank":
        return {"query": QUERY, "texts": texts}
    if path == "/predict":
        return {"inputs": [[QUERY, text] for text in texts]}
    if path == "/similarity":
        # The source sentence counts: `size` inputs are size - 1 sentences.
        return {"inputs": {"source_sentence": QUERY, "sentences": texts[1:]}}
    if path == "/decode":
        return {"ids": [[5 + n] for n in range(size)]}
    return {"inputs": texts}


BATCH_ROUTES = [
    ("embedding", "/embed"),
    ("splade", "/embed_sparse"),
    ("embedding", "/embed_all"),
    ("reranker", "/rerank"),
    ("reranker", "/predict"),
    ("embedding", "/similarity"),
    ("embedding", "/tokenize"),
    ("embedding", "/decode"),
]


@pytest.mark.parametrize(("kind", "path"), BATCH_ROUTES)
def test_every_batch_route_refuses_more_than_max_client_batch_size_with_422(
    connect: Connect, kind: Any, path: str
) -> None:
    # server.rs: each handler's `batch_size > info.max_client_batch_size` check, ErrorType
    # Validation (422; the OpenAPI document says 413, the code does not).
    fake = FakeTEI(kind=kind, max_client_batch_size=2)
    client = connect(fake)
    at_limit = client.post(path, json=_batch(path, 2))
    assert at_limit.status_code == 200, at_limit.text
    conforms(at_limit)
    over = client.post(path, json=_batch(path, 3))
    assert over.status_code == 422
    assert conforms(over) == {
        "error": "batch size 3 > maximum allowed batch size 2",
        "error_type": "Validation",
    }
    assert fake.answers_by_path[path] == 1
    assert fake.contract_violations == []


@pytest.mark.parametrize(
    ("kind", "path", "body", "message"),
    [
        # types.rs: `Input` is untagged and tries Single first, so [] is one empty input and
        # the refusal is tokenization.rs's, not the handler's.
        ("embedding", "/embed", {"inputs": []}, "Input validation error: `inputs` cannot be empty"),
        (
            "embedding",
            "/embed",
            {"inputs": ["a", ""]},
            "Input validation error: `inputs` cannot be empty",
        ),
        (
            "splade",
            "/embed_sparse",
            {"inputs": [""]},
            "Input validation error: `inputs` cannot be empty",
        ),
        ("reranker", "/rerank", {"query": "q", "texts": []}, "`texts` cannot be empty"),
        (
            "reranker",
            "/rerank",
            {"query": "", "texts": [""]},
            "Input validation error: `inputs` cannot be empty",
        ),
        (
            "embedding",
            "/similarity",
            {"inputs": {"source_sentence": "a", "sentences": []}},
            "`inputs.sentences` cannot be empty",
        ),
        ("embedding", "/tokenize", {"inputs": []}, "`inputs` cannot be empty"),
        (
            "embedding",
            "/tokenize",
            {"inputs": ""},
            "Input validation error: `inputs` cannot be empty",
        ),
        (
            "embedding",
            "/decode",
            {"ids": []},
            "Input validation error: `input_ids` cannot be empty",
        ),
        (
            "embedding",
            "/decode",
            {"ids": [[5], []]},
            "Input validation error: `input_ids` cannot be empty",
        ),
    ],
)
def test_empty_inputs_are_400_empty(
    connect: Connect, kind: Any, path: str, body: dict[str, Any], message: str
) -> None:
    response = connect(FakeTEI(kind=kind)).post(path, json=body)
    assert response.status_code == 400
    assert conforms(response) == {"error": message, "error_type": "Empty"}


def test_over_long_input_is_422_unless_truncated(connect: Connect) -> None:
    # tokenization.rs, encode_input: the token limit, counted with <s> and </s>.
    fake = FakeTEI(max_input_length=4, auto_truncate=False)
    client = connect(fake)
    long_text = "one two three four five six"
    refused = client.post("/embed", json={"inputs": [long_text]})
    assert refused.status_code == 422
    assert conforms(refused) == {
        "error": "Input validation error: `inputs` must have less than 4 tokens. Given: 8",
        "error_type": "Validation",
    }
    # What truncation keeps is what the model sees: two words and the two specials.
    truncated = client.post("/embed", json={"inputs": [long_text], "truncate": True})
    assert conforms(truncated) == [fake.vector("one two")]
    assert truncated.headers["x-compute-tokens"] == "4"
    left = {"inputs": [long_text], "truncate": True, "truncation_direction": "left"}
    assert conforms(client.post("/embed", json=left)) == [fake.vector("five six")]
    # Left out, `truncate` is the server's auto-truncate (on by default, as in TEI 1.9.3).
    default = connect(FakeTEI(max_input_length=4)).post("/embed", json={"inputs": long_text})
    assert conforms(default) == [fake.vector("one two")]


def test_rerank_pairs_are_cut_longest_first(connect: Connect) -> None:
    fake = FakeTEI(kind="reranker", max_input_length=8, auto_truncate=False)
    client = connect(fake)
    body = {"query": "a b", "texts": ["c d e f g h"], "raw_scores": True}
    refused = client.post("/rerank", json=body)
    assert refused.status_code == 422
    assert conforms(refused)["error"].endswith("less than 8 tokens. Given: 12")
    kept = conforms(client.post("/rerank", json={**body, "truncate": True}))
    # 8 tokens less 4 specials: the longer text loses words until the pair fits, 2 + 2.
    assert kept == [{"index": 0, "score": fake.logit("a b", "c d")}]


def test_over_long_text_in_characters(connect: Connect) -> None:
    # tokenization.rs, tokenize_input: max_input_length * 250 characters at most.
    fake = FakeTEI(max_input_length=1, auto_truncate=False)
    client = connect(fake)
    response = client.post("/embed", json={"inputs": "x" * 300})
    assert response.status_code == 422
    assert conforms(response)["error"] == (
        "Input validation error: `inputs` must have less than 250 characters. Given: 300"
    )
    tokenize = client.post("/tokenize", json={"inputs": "x" * 300})
    assert tokenize.status_code == 422


@pytest.mark.parametrize(
    ("kind", "path", "body", "message"),
    [
        ("embedding", "/rerank", {"query": "q", "texts": ["a"]}, "model is not a re-ranker model"),
        ("splade", "/rerank", {"query": "q", "texts": ["a"]}, "model is not a re-ranker model"),
        ("classifier", "/rerank", {"query": "q", "texts": ["a"]}, "model is not a re-ranker model"),
        ("embedding", "/predict", {"inputs": ["q", "a"]}, "Model is not a classifier model"),
        ("reranker", "/embed", {"inputs": ["a"]}, "Model is not an embedding model"),
        ("reranker", "/embed_all", {"inputs": ["a"]}, "Model is not an embedding model"),
        (
            "reranker",
            "/similarity",
            {"inputs": {"source_sentence": "a", "sentences": ["b"]}},
            "Model is not an embedding model",
        ),
        (
            "embedding",
            "/embed_sparse",
            {"inputs": ["a"]},
            "Model is not an embedding model with SPLADE pooling",
        ),
        (
            "reranker",
            "/embed_sparse",
            {"inputs": ["a"]},
            "Model is not an embedding model with SPLADE pooling",
        ),
        ("splade", "/embed", {"inputs": ["a"]}, "`normalize` is not available for SPLADE models"),
        (
            "splade",
            "/embed_all",
            {"inputs": ["a"]},
            "`embed_all` is not available for SPLADE models",
        ),
    ],
)
def test_a_route_the_model_type_cannot_serve_is_424(
    connect: Connect, kind: Any, path: str, body: dict[str, Any], message: str
) -> None:
    # infer.rs (and server.rs, rerank): BackendError::Inference, so ErrorType Backend.
    response = connect(FakeTEI(kind=kind)).post(path, json=body)
    assert response.status_code == 424
    assert conforms(response) == {"error": f"Backend error: {message}", "error_type": "Backend"}


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
    # A SPLADE model's /embed without normalising is its sparse vector written out densely.
    [dense] = conforms(client.post("/embed", json={"inputs": "a b", "normalize": False}))
    assert len(dense) == 30522
    assert [(i, v) for i, v in enumerate(dense) if v] == fake.sparse("a b")


def test_embed_all_answers_a_vector_per_token(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    response = client.post("/embed_all", json={"inputs": ["a b c", "d"]})
    rows = conforms(response)
    assert rows == [fake.token_vectors("a b c"), fake.token_vectors("d")]
    assert [len(row) for row in rows] == [5, 3]
    assert response.headers["x-compute-tokens"] == "8"


def test_dimensions(connect: Connect) -> None:
    client = connect(FakeTEI(dimension=8))
    zero = client.post("/embed", json={"inputs": "a", "dimensions": 0})
    assert zero.status_code == 422
    assert conforms(zero)["error"] == "Input validation error: `dimensions` should be positive"
    wide = client.post("/embed", json={"inputs": "a", "dimensions": 9})
    assert wide.status_code == 422
    assert conforms(wide)["error"] == (
        "Input validation error: `dimensions` should be smaller than the maximum embedding "
        "dimension."
    )
    negative = client.post("/embed", json={"inputs": "a", "dimensions": -1})
    assert negative.status_code == 422
    assert negative.text.startswith("Failed to deserialize the JSON body into the target type")


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
        assert ranks[0]["score"] == pytest.approx(
            1 / (1 + math.exp(-fake.logit(QUERY, texts[ranks[0]["index"]])))
        )
    pairs = sum(tokenized_count(client, [QUERY, text]) for text in texts)
    assert int(response.headers["x-compute-tokens"]) == pairs
    chars = len(QUERY) * len(texts) + sum(len(text) for text in texts)
    assert int(response.headers["x-compute-characters"]) == chars

    # TEI has no top_n: the field is ignored (serde keeps unknown fields out of the way).
    with_text = conforms(client.post("/rerank", json={**body, "return_text": True, "top_n": 1}))
    assert len(with_text) == len(texts)
    assert all(rank["text"] == texts[rank["index"]] for rank in with_text)
    assert fake.contract_violations == []


def test_predict(connect: Connect) -> None:
    reranker = FakeTEI(kind="reranker")
    client = connect(reranker)
    # types.rs, PredictInput: a pair is one sequence; a list of lists is a batch.
    single = conforms(client.post("/predict", json={"inputs": [QUERY, "a fox"]}))
    assert single == [{"score": reranker.score(QUERY, "a fox"), "label": "LABEL_0"}]
    batch = conforms(
        client.post("/predict", json={"inputs": [[QUERY, "a fox"], ["alone"]], "raw_scores": True})
    )
    assert batch == [
        [{"score": reranker.logit(QUERY, "a fox"), "label": "LABEL_0"}],
        [{"score": reranker.logit("", "alone"), "label": "LABEL_0"}],
    ]
    three = client.post("/predict", json={"inputs": ["a", "b", "c"]})
    assert three.status_code == 422
    assert "invalid length 3" in three.text

    classifier = FakeTEI(kind="classifier")
    [labels] = conforms(connect(classifier).post("/predict", json={"inputs": [["so good"]]}))
    assert [p["label"] for p in labels] == [
        p["label"] for p in classifier.predictions(("so good",))
    ]
    assert labels[0]["score"] >= labels[1]["score"]
    assert math.isclose(sum(p["score"] for p in labels), 1.0, rel_tol=1e-6)


def test_similarity_is_the_cosine_of_unnormalised_embeddings(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    body = {"inputs": {"source_sentence": QUERY, "sentences": TEXTS}}
    response = client.post("/similarity", json=body)
    similarities = conforms(response)
    assert similarities == fake.similarities(QUERY, TEXTS)
    rows = conforms(client.post("/embed", json={"inputs": [QUERY, *TEXTS], "normalize": False}))
    for row, similarity in zip(rows[1:], similarities, strict=True):
        cosine = sum(a * b for a, b in zip(rows[0], row, strict=True)) / (
            math.hypot(*rows[0]) * math.hypot(*row)
        )
        assert similarity == pytest.approx(cosine, rel=1e-5)
    assert int(response.headers["x-compute-tokens"]) == tokenized_count(client, [QUERY, *TEXTS])


@pytest.mark.parametrize(
    ("kind", "task", "path", "body"),
    [
        ("embedding", None, "/embed", {"inputs": ["a"]}),
        ("splade", None, "/embed_sparse", {"inputs": ["a"]}),
        ("reranker", None, "/rerank", {"query": "q", "texts": ["a", "b"]}),
        ("classifier", None, "/predict", {"inputs": "a"}),
        (
            "embedding",
            "sentence-similarity",
            "/similarity",
            {"inputs": {"source_sentence": "a", "sentences": ["b"]}},
        ),
    ],
)
def test_post_root_and_invocations_run_the_model_types_route(
    connect: Connect, kind: Any, task: str | None, path: str, body: dict[str, Any]
) -> None:
    # server.rs, run: POST / and POST /invocations are routed by model type, not body shape.
    fake = FakeTEI(kind=kind, task=task)
    client = connect(fake)
    expected = client.post(path, json=body).json()
    assert client.post("/", json=body).json() == expected
    assert client.post("/invocations", json=body).json() == expected
    assert fake.contract_violations == []


def test_tokenize(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    response = client.post("/tokenize", json={"inputs": ["hello  big world"]})
    [tokens] = conforms(response)
    assert [token["text"] for token in tokens] == ["<s>", "hello", "big", "world", "</s>"]
    assert [token["special"] for token in tokens] == [True, False, False, False, True]
    assert (tokens[0]["start"], tokens[0]["stop"]) == (None, None)
    assert (tokens[2]["start"], tokens[2]["stop"]) == (7, 10)
    assert all(4 <= token["id"] < 250002 for token in tokens[1:-1])
    assert tokens == fake.tokens("hello  big world")
    # TEI's /tokenize carries none of the x-compute-* headers the model routes carry.
    assert "x-compute-tokens" not in response.headers
    bare = conforms(client.post("/tokenize", json={"inputs": "a b", "add_special_tokens": False}))
    assert [token["text"] for token in bare[0]] == ["a", "b"]
    # Offsets are UTF-8 bytes (core/src/tokenization.rs, into_tokens).
    [[_, word, _]] = conforms(client.post("/tokenize", json={"inputs": "Grüße"}))
    assert (word["text"], word["start"], word["stop"]) == ("Grüße", 0, 7)


def test_decode_gives_back_the_text_of_ids(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    [tokens] = conforms(client.post("/tokenize", json={"inputs": "hello big world"}))
    ids = [token["id"] for token in tokens]
    assert conforms(client.post("/decode", json={"ids": ids})) == ["hello big world"]
    kept = conforms(
        client.post("/decode", json={"ids": [ids, ids[1:2]], "skip_special_tokens": False})
    )
    assert kept == ["<s> hello big world </s>", "hello"]
    # Token ids as /embed inputs are decoded and re-encoded without added specials.
    embedded = client.post("/embed", json={"inputs": [ids[1:-1]]})
    assert conforms(embedded) == [fake.vector("hello big world")]
    assert embedded.headers["x-compute-tokens"] == "3"


def test_prompts(connect: Connect) -> None:
    fake = FakeTEI(prompts={"query": "query: "})
    client = connect(fake)
    body = {"inputs": "hello", "prompt_name": "query"}
    assert conforms(client.post("/embed", json=body)) == [fake.vector("query: hello")]
    unknown = client.post("/embed", json={**body, "prompt_name": "passage"})
    assert unknown.status_code == 422
    assert "it was not found in the Sentence Transformers prompts" in conforms(unknown)["error"]
    none = connect(FakeTEI()).post("/embed", json=body)
    assert none.status_code == 422
    assert "no prompts were found" in conforms(none)["error"]


def test_overloaded_when_the_inputs_exceed_max_concurrent_requests(connect: Connect) -> None:
    # infer.rs, try_acquire_permit: one permit per input, none waited for.
    fake = FakeTEI(kind="reranker", max_concurrent_requests=2)
    client = connect(fake)
    assert client.post("/rerank", json={"query": "q", "texts": ["a", "b"]}).status_code == 200
    refused = client.post("/rerank", json={"query": "q", "texts": ["a", "b", "c"]})
    assert refused.status_code == 429
    assert conforms(refused) == {"error": "Model is overloaded", "error_type": "Overloaded"}
    # /tokenize and /decode take no permits.
    assert client.post("/tokenize", json={"inputs": ["a", "b", "c"]}).status_code == 200
    assert fake.permits_in_use == 0


def test_overloaded_while_other_requests_hold_the_permits(connect: Connect) -> None:
    fake = FakeTEI(max_concurrent_requests=1)
    client = connect(fake)
    fake.delay_s = 0.5
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(client.post, "/embed", json={"inputs": "a"})
        time.sleep(0.2)
        second = pool.submit(client.post, "/embed", json={"inputs": "b"})
        statuses = sorted([first.result().status_code, second.result().status_code])
    assert statuses == [200, 429]
    assert fake.permits_in_use == 0


def test_bodies_axum_refuses_before_the_handler(connect: Connect) -> None:
    fake = FakeTEI(payload_limit=100)
    client = connect(fake)
    not_json = client.post("/embed", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert not_json.text.startswith("Failed to parse the request body as JSON: ")
    no_type = client.post("/embed", content=b'{"inputs": "a"}')
    assert no_type.status_code == 415
    assert no_type.text == "Expected request with `Content-Type: application/json`"
    for body in ({"inputs": 5}, {"text": "a"}, {"inputs": "a", "normalize": None}, ["a"]):
        wrong = client.post("/embed", json=body)
        assert wrong.status_code == 422
        assert wrong.text.startswith("Failed to deserialize the JSON body into the target type: ")
    direction = client.post("/embed", json={"inputs": "a", "truncation_direction": "middle"})
    assert direction.status_code == 422
    large = client.post("/embed", json={"inputs": "a" * 200})
    assert large.status_code == 413
    assert large.text == "Failed to buffer the request body: length limit exceeded"
    assert client.get("/embed").status_code == 405
    for path in ("/v1/embeddings", "/vertex", "/nope"):
        assert client.post(path, json={"inputs": "a"}).status_code == 404
    assert fake.answers_by_path["/embed"] == 0


def test_api_key(connect: Connect) -> None:
    fake = FakeTEI(api_key="s3cret")
    client = connect(fake)
    refused = client.post("/embed", json={"inputs": "a"})
    assert (refused.status_code, refused.content) == (401, b"")
    assert client.get("/info").status_code == 401
    assert client.get("/health").status_code == 200
    assert client.get("/ping").status_code == 200
    bearer = {"authorization": "Bearer s3cret"}
    assert client.post("/embed", json={"inputs": "a"}, headers=bearer).status_code == 200


def test_strip_headers_drops_the_metadata(connect: Connect) -> None:
    fake = FakeTEI()
    client = connect(fake)
    fake.strip_headers = True
    response = client.post("/embed", json={"inputs": "a"})
    assert conforms(response) == [fake.vector("a")]
    assert not any(name.startswith("x-compute") for name in response.headers)


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
