"""Every endpoint of a live server answers as documented."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer

from tests.conftest import ModelDirs
from tests.texts import DOCUMENTS, LONG_TEXT, QUERY


def token_count(models: ModelDirs, text: str) -> int:
    tokenizer = AutoTokenizer.from_pretrained(models.m3)
    return len(tokenizer(text, truncation=True, max_length=512)["input_ids"])


def test_health_reports_models_routes_and_device(client: httpx.Client, models: ModelDirs) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["embedder_loaded"] is True
    assert body["reranker_loaded"] is True
    assert body["device"] == "cpu"
    # Public names, never the folders the models were loaded from.
    assert (body["embedding_model"], body["reranker_model"]) == (
        "BAAI/bge-m3",
        "BAAI/bge-reranker-v2-m3",
    )
    assert body["routes"] == {"embed": "flag", "lexical_colbert": "flag", "rerank": "flag"}
    assert body["chains"] == {"embed": ["flag"], "lexical_colbert": ["flag"], "rerank": ["flag"]}
    assert body["backends"]["flag"]["stats"]["embed.forward_passes"] >= 0


def test_embeddings_shape_usage_and_norm(client: httpx.Client, models: ModelDirs) -> None:
    texts = ["hello world", "the cat", LONG_TEXT]
    body = client.post("/v1/embeddings", json={"input": texts, "model": "BAAI/bge-m3"}).json()
    assert body["object"] == "list"
    assert body["model"] == "BAAI/bge-m3"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected_tokens = sum(token_count(models, t) for t in texts)
    assert body["usage"] == {"prompt_tokens": expected_tokens, "total_tokens": expected_tokens}
    assert token_count(models, LONG_TEXT) == 512  # the long text was truncated, not refused


def test_embeddings_single_string_and_model_basename(client: httpx.Client) -> None:
    body = client.post("/v1/embeddings", json={"input": "hello", "model": "bge-m3"}).json()
    assert len(body["data"]) == 1
    assert body["usage"]["prompt_tokens"] > 0


def test_embeddings_dimensions_truncate_and_renormalize(client: httpx.Client) -> None:
    full = client.post("/v1/embeddings", json={"input": "hello world"}).json()["data"][0][
        "embedding"
    ]
    short = client.post("/v1/embeddings", json={"input": "hello world", "dimensions": 8}).json()[
        "data"
    ][0]["embedding"]
    prefix = np.array(full[:8])
    np.testing.assert_allclose(short, prefix / np.linalg.norm(prefix), atol=1e-6)


def test_models_list(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert {m["id"] for m in body["data"]} == {"BAAI/bge-m3", "BAAI/bge-reranker-v2-m3"}


def test_a_folder_path_is_not_a_model_name(client: httpx.Client, models: ModelDirs) -> None:
    response = client.post("/v1/embeddings", json={"input": "a", "model": str(models.m3)})
    assert response.status_code == 404
    assert "answers to `BAAI/bge-m3`, `bge-m3`" in response.json()["error"]["message"]


def test_sparse_embeddings_are_qdrant_ready(client: httpx.Client, models: ModelDirs) -> None:
    body = client.post("/v1/sparse-embeddings", json={"input": ["hello world", "paris"]}).json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    vocabulary = len(AutoTokenizer.from_pretrained(models.m3))
    for item in body["data"]:
        sparse = item["sparse"]
        # The default space: token ids, indices below the vocabulary's size.
        assert sparse["mapping"] == "tokenizer"
        assert sparse["index_space"] == vocabulary
        assert len(sparse["indices"]) == len(sparse["values"]) > 0
        assert sparse["indices"] == sorted(set(sparse["indices"]))
        assert all(0 <= i < vocabulary for i in sparse["indices"])
        assert all(v > 0 for v in sparse["values"])
    assert body["usage"]["prompt_tokens"] > 0


def test_hybrid_is_dense_plus_sparse_plus_optional_colbert(client: httpx.Client) -> None:
    texts = ["hello world", "the quick brown fox"]
    hybrid = client.post("/v1/hybrid-embeddings", json={"input": texts}).json()["data"]
    assert all("colbert" not in item for item in hybrid)
    dense = client.post("/v1/embeddings", json={"input": texts}).json()["data"]
    sparse = client.post("/v1/sparse-embeddings", json={"input": texts}).json()["data"]
    for h, d, s in zip(hybrid, dense, sparse, strict=True):
        np.testing.assert_allclose(h["dense"], d["embedding"], atol=1e-6)
        assert h["sparse"] == s["sparse"]
    with_colbert = client.post(
        "/v1/hybrid-embeddings", json={"input": texts, "return_colbert": True}
    ).json()["data"]
    tokenizer_lengths = [len(c["colbert"]) for c in with_colbert]
    assert all(n > 1 for n in tokenizer_lengths)
    for item in with_colbert:
        np.testing.assert_allclose(
            np.linalg.norm(np.array(item["colbert"]), axis=1), 1.0, atol=1e-5
        )


def test_hybrid_base64_is_the_float_answer_exactly(client: httpx.Client) -> None:
    texts = ["hello world", "the quick brown fox jumps"]
    body = {"input": texts, "return_colbert": True}
    numbers = client.post("/v1/hybrid-embeddings", json=body).json()
    packed = client.post("/v1/hybrid-embeddings", json={**body, "encoding_format": "base64"})
    assert packed.status_code == 200, packed.text

    def unpacked(row: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.frombuffer(base64.b64decode(row), dtype="<f4")

    for plain, item in zip(numbers["data"], packed.json()["data"], strict=True):
        assert isinstance(item["dense"], str) and all(isinstance(r, str) for r in item["colbert"])
        np.testing.assert_array_equal(unpacked(item["dense"]), np.float32(plain["dense"]))
        np.testing.assert_array_equal(
            np.stack([unpacked(row) for row in item["colbert"]]), np.float32(plain["colbert"])
        )
        assert item["sparse"] == plain["sparse"]
    assert packed.json()["usage"] == numbers["usage"]
    # A quarter the bytes, give or take the sparse part both carry as numbers.
    assert len(packed.content) * 3 < len(client.post("/v1/hybrid-embeddings", json=body).content)


def test_rerank_sorted_top_n_and_documents(client: httpx.Client) -> None:
    documents: list[object] = [
        "the cat sat on the mat in paris",
        {"text": "berlin music history", "id": "doc-2", "meta": {"lang": "en"}},
        "a dog in the river",
    ]
    body = client.post(
        "/v1/rerank",
        json={"query": QUERY, "documents": documents, "top_n": 2, "return_documents": True},
    ).json()
    results = body["results"]
    assert len(results) == 2
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)
    for result in results:
        original = documents[result["index"]]
        expected = original if isinstance(original, dict) else {"text": original}
        assert result["document"] == expected
    assert body["usage"]["prompt_tokens"] > 0
    assert re.fullmatch(r"[0-9a-f-]{36}", body["id"])


def test_rerank_without_documents_and_top_n_above_count(client: httpx.Client) -> None:
    body = client.post(
        "/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS[:3], "top_n": 50}
    ).json()
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2]
    assert all("document" not in r for r in body["results"])


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_rerank_aliases(client: httpx.Client, path: str) -> None:
    assert client.post(path, json={"query": "q", "documents": ["a"]}).status_code == 200


def test_docs_render_without_internet(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "SwaggerUIBundle" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets, "the docs page loads its script and styles"
    for asset in assets:
        assert not asset.startswith(("http:", "https:", "//")), asset
        assert client.get(asset).status_code == 200, asset
    schema = client.get("/docs/openapi.json").json()
    for path in ("/v1/embeddings", "/v1/sparse-embeddings", "/v1/hybrid-embeddings", "/v1/rerank"):
        assert path in schema["paths"]


def test_every_route_is_documented_with_examples_by_dialect(client: httpx.Client) -> None:
    schema = client.get("/docs/openapi.json").json()
    tags: set[str] = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            tags.update(operation["tags"])
            if where == "GET /ping":
                # TEI's: an empty text/plain 200, nothing to show.
                assert list(operation["responses"]["200"]["content"]) == ["text/plain"]
                continue
            ok = operation["responses"]["200"]["content"]["application/json"]
            assert ok["examples"], where
            if method == "post":
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                assert body["examples"], where
            for status, response in operation["responses"].items():
                if status != "200":
                    # Written examples, not generated ones (random strings say nothing).
                    example = next(
                        iter(response["content"]["application/json"]["examples"].values())
                    )
                    assert "error" in example["value"], (where, status)
    assert {"OpenAI", "Cohere", "TEI", "Infinity", "BAAI reranker service", "bge-m3"} <= tags
