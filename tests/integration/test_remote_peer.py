"""REMOTE_KIND=self: a front end with no model of its own, in front of another bge-serve.

The peer is the session's plain flag server; every answer through the front end
must equal the peer's own (and so the flag backend's): sparse, ColBERT and
hybrid included, which no TEI or Infinity remote can give.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from engine.sparse_mapping import hashed_index
from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.fixtures.tiny_models import corpus
from tests.texts import DOCUMENTS, QUERY, TEXTS


@pytest.fixture(scope="module")
def front(models: ModelDirs, server: Server) -> Iterator[Server]:
    live = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote",
            "LEXICAL_COLBERT_BACKENDS": "remote",
            "RERANK_BACKENDS": "remote",
            "REMOTE_URL": server.url,
            # Larger than the peer's 64: the front end must split to the peer's limit.
            "MAX_BATCH_SIZE": "200",
            "MAX_TEXT_CHARS": "100000",
        },
    )
    yield live
    stop_server(live)


def post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    answer.pop("id", None)  # Cohere-shaped answers carry a fresh id
    return answer


def test_front_end_found_a_peer_and_routes_everything_to_it(front: Server) -> None:
    health = httpx.get(f"{front.url}/health").json()
    assert health["status"] == "ok"
    assert health["routes"] == {"embed": "remote", "lexical_colbert": "remote", "rerank": "remote"}
    assert "bge-serve serving embed" in health["backends"]["remote"]["detail"]
    assert "flag" not in health["backends"]  # the front end loaded no model


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"input": TEXTS}),
        ("/v1/embeddings", {"input": TEXTS, "encoding_format": "base64", "dimensions": 8}),
        ("/v1/sparse-embeddings", {"input": TEXTS}),
        ("/v1/sparse-embeddings", {"input": TEXTS, "mapping": "tokenizer"}),
        ("/v1/sparse-embeddings", {"input": TEXTS, "mapping": "hash"}),
        ("/v1/hybrid-embeddings", {"input": TEXTS, "mapping": "hash"}),
        ("/v1/hybrid-embeddings", {"input": TEXTS}),
        ("/v1/hybrid-embeddings", {"input": TEXTS, "return_colbert": True}),
        (
            "/v1/hybrid-embeddings",
            {"input": TEXTS, "return_colbert": True, "encoding_format": "base64"},
        ),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 3}),
    ],
)
def test_answers_equal_the_peers_own(
    front: Server, server: Server, path: str, body: dict[str, Any]
) -> None:
    through_front = post(front.url, path, body)
    direct = post(server.url, path, body)
    # Same JSON, usage included: vectors travel exactly (base64 float32 or exact decimals).
    assert through_front == direct


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {"inputs": TEXTS[:5]}),
        ("/tokenize", {"inputs": "hello world", "add_special_tokens": False}),
        ("/decode", {"ids": [[0, 5, 6, 7, 2], [8, 9]], "skip_special_tokens": False}),
        ("/embed", {"inputs": TEXTS}),
        ("/embed_sparse", {"inputs": TEXTS}),
        ("/rerank", {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}),
        ("/predict", {"inputs": [[QUERY, DOCUMENTS[0]], ["berlin", DOCUMENTS[1]]]}),
    ],
)
def test_tei_routes_through_a_peer_equal_the_peers_own(
    front: Server, server: Server, path: str, body: dict[str, Any]
) -> None:
    # Tokens and decoding travel too: the peer's own TEI routes answer them.
    through_front = httpx.post(f"{front.url}{path}", json=body, timeout=120)
    direct = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert through_front.status_code == direct.status_code == 200, through_front.text
    if path == "/predict":
        # Its pairs go to the peer as one call per query, which the peer may batch its
        # own way: equal within float noise.
        got = [row[0]["score"] for row in through_front.json()]
        want = [row[0]["score"] for row in direct.json()]
        np.testing.assert_allclose(got, want, atol=1e-5)
    else:
        assert through_front.json() == direct.json()


def test_sparse_index_space_follows_the_front_ends_mapping(front: Server, server: Server) -> None:
    # The default: token ids, in the vocabulary the front end read from the peer at start-up.
    tokenizer = post(front.url, "/v1/sparse-embeddings", {"input": ["hello world"]})["data"][0]
    assert tokenizer["sparse"]["mapping"] == "tokenizer"
    direct = post(server.url, "/v1/sparse-embeddings", {"input": ["hello world"]})["data"][0]
    assert tokenizer["sparse"]["index_space"] == direct["sparse"]["index_space"]
    assert tokenizer["sparse"]["index_space"] > max(tokenizer["sparse"]["indices"])
    # The front end hashes the peer's token ids itself, with its own SPARSE_INDEX_SPACE.
    body = {"input": ["hello world"], "mapping": "hash"}
    hashed = post(front.url, "/v1/sparse-embeddings", body)["data"][0]["sparse"]
    assert hashed["mapping"] == "hash"
    assert hashed["index_space"] == 1_048_576
    assert hashed["indices"] == sorted(
        {hashed_index(i, 1_048_576) for i in tokenizer["sparse"]["indices"]}
    )
    info = httpx.get(f"{front.url}/info").json()
    health = httpx.get(f"{front.url}/health").json()
    for said in (info, health):
        assert said["sparse_mapping"] == "tokenizer"
        assert said["sparse_index_space"] == tokenizer["sparse"]["index_space"]


def test_a_batch_larger_than_the_peers_limit_is_split_and_merged_in_order(
    front: Server, server: Server
) -> None:
    texts = corpus(150, seed=11)  # the peer takes 64 per request: 64 + 64 + 22
    before = httpx.get(f"{front.url}/health").json()["backends"]["remote"]["stats"]["requests"]
    merged = post(front.url, "/v1/hybrid-embeddings", {"input": texts, "return_colbert": True})
    after = httpx.get(f"{front.url}/health").json()["backends"]["remote"]["stats"]["requests"]
    assert after - before == 3
    parts = [
        post(
            server.url,
            "/v1/hybrid-embeddings",
            {"input": texts[i : i + 64], "return_colbert": True},
        )
        for i in range(0, 150, 64)
    ]
    rows = [row for part in parts for row in part["data"]]
    assert [row["index"] for row in merged["data"]] == list(range(150))
    # The peer batches the three concurrent chunks its own way: float noise, no more.
    for got, want in zip(merged["data"], rows, strict=True):
        assert got["sparse"]["indices"] == want["sparse"]["indices"]
        np.testing.assert_allclose(
            got["sparse"]["values"], want["sparse"]["values"], rtol=2e-5, atol=1e-5
        )
        np.testing.assert_allclose(got["dense"], want["dense"], atol=1e-5)
        np.testing.assert_allclose(got["colbert"], want["colbert"], atol=1e-5)
    assert merged["usage"]["prompt_tokens"] == sum(p["usage"]["prompt_tokens"] for p in parts)


def test_the_peers_refusal_reaches_the_client_with_its_message(front: Server) -> None:
    # The peer refuses a text longer than its MAX_TEXT_CHARS=20000; the front end allows
    # 100000 here, so only the peer can say no, and the client must hear why.
    response = httpx.post(
        f"{front.url}/v1/embeddings", json={"input": ["word " * 5000]}, timeout=60
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert "refused the input" in error["message"]
    assert "MAX_TEXT_CHARS" in error["message"]
