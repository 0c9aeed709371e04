"""The flag backend, alone and through the live server, equals FlagEmbedding's own results."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from backends.flag import FlagBackend
from engine import Operation, Output, Settings
from tests.conftest import ModelDirs
from tests.reference import M3Reference, m3_reference, rerank_reference
from tests.texts import DOCUMENTS, QUERY, TEXTS

ATOL = 2e-5


@pytest.fixture(scope="module")
def reference(models: ModelDirs) -> M3Reference:
    return m3_reference(models.m3, TEXTS)


@pytest.fixture(scope="module")
def rerank_logits(models: ModelDirs) -> list[float]:
    return rerank_reference(models.reranker, QUERY, DOCUMENTS)


@pytest.fixture(scope="module")
def backend(models: ModelDirs, loop: asyncio.AbstractEventLoop) -> Iterator[FlagBackend]:
    settings = Settings(
        dtype="float32",
        embedding_model_name=str(models.m3),
        reranker_model_name=str(models.reranker),
        device="cpu",
        max_batch_tokens=2048,  # several forward passes with different padding
    )
    flag = FlagBackend(settings, frozenset(Operation))
    loop.run_until_complete(flag.start())
    yield flag
    loop.run_until_complete(flag.stop())


def assert_lexical_equal(ids: np.ndarray, weights: np.ndarray, expected: dict[str, float]) -> None:
    assert sorted(int(k) for k in expected) == ids.tolist()
    np.testing.assert_allclose(
        weights, [expected[str(i)] for i in ids.tolist()], rtol=1e-5, atol=ATOL
    )


def test_backend_heads_equal_bgem3flagmodel(
    backend: FlagBackend, reference: M3Reference, loop: asyncio.AbstractEventLoop
) -> None:
    encoding = loop.run_until_complete(backend.encode(TEXTS, frozenset(Output)))
    assert encoding.dense is not None and encoding.lexical is not None
    assert encoding.colbert is not None
    np.testing.assert_allclose(encoding.dense, reference.dense, atol=ATOL)
    assert sum(len(w) for w in reference.lexical) > len(TEXTS)  # the check has teeth
    for weights, expected in zip(encoding.lexical, reference.lexical, strict=True):
        assert_lexical_equal(weights.token_ids, weights.weights, expected)
    for ours, theirs in zip(encoding.colbert, reference.colbert, strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=ATOL)


def test_backend_single_head_passes_equal_the_combined_pass(
    backend: FlagBackend, loop: asyncio.AbstractEventLoop
) -> None:
    both = loop.run_until_complete(backend.encode(TEXTS[:5], frozenset(Output)))
    dense_only = loop.run_until_complete(backend.encode(TEXTS[:5], frozenset({Output.DENSE})))
    assert dense_only.lexical is None and dense_only.colbert is None
    assert both.dense is not None and dense_only.dense is not None
    np.testing.assert_allclose(dense_only.dense, both.dense, atol=1e-6)


def test_backend_scores_equal_flagreranker(
    backend: FlagBackend, rerank_logits: list[float], loop: asyncio.AbstractEventLoop
) -> None:
    scores = loop.run_until_complete(backend.score(QUERY, DOCUMENTS))
    np.testing.assert_allclose(scores.logits, rerank_logits, atol=1e-4)
    assert len(set(np.round(rerank_logits, 3))) > len(DOCUMENTS) // 2  # not all alike


def test_server_hybrid_equals_bgem3flagmodel(client: httpx.Client, reference: M3Reference) -> None:
    response = client.post("/v1/hybrid-embeddings", json={"input": TEXTS, "return_colbert": True})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(TEXTS)))
    for item, dense, lexical, colbert in zip(
        data, reference.dense, reference.lexical, reference.colbert, strict=True
    ):
        np.testing.assert_allclose(item["dense"], dense, atol=ATOL)
        np.testing.assert_allclose(np.array(item["colbert"]), colbert, atol=ATOL)
        # The default space is FlagEmbedding's own: lexical_weights keyed by token id.
        expected = {int(token_id): weight for token_id, weight in lexical.items()}
        assert item["sparse"]["mapping"] == "tokenizer"
        assert item["sparse"]["indices"] == sorted(expected)
        np.testing.assert_allclose(
            item["sparse"]["values"], [expected[i] for i in sorted(expected)], rtol=1e-5, atol=ATOL
        )


def test_server_embeddings_equal_bgem3flagmodel(
    client: httpx.Client, reference: M3Reference
) -> None:
    response = client.post("/v1/embeddings", json={"input": TEXTS})
    assert response.status_code == 200, response.text
    got = np.array([item["embedding"] for item in response.json()["data"]])
    np.testing.assert_allclose(got, reference.dense, atol=ATOL)


def test_server_rerank_equals_flagreranker(
    client: httpx.Client, rerank_logits: list[float]
) -> None:
    raw = client.post(
        "/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}
    ).json()["results"]
    by_index = {r["index"]: r["relevance_score"] for r in raw}
    np.testing.assert_allclose(
        [by_index[i] for i in range(len(DOCUMENTS))], rerank_logits, atol=1e-4
    )
    normalized = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()
    expected = 1 / (1 + np.exp(-np.array(rerank_logits)))
    for result in normalized["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-5)
