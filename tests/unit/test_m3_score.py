"""bge-m3's three-way score: the score functions on hand-computed values, and
``POST /v1/m3-score`` over an in-memory backend (its answer, its refusals, and the
error of a deployment that does not serve bge-m3's heads)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from engine import InferenceEngine, InvalidInput, Operation, Output, Settings
from engine.m3_score import colbert_score, dense_scores, lexical_score, m3_scores
from engine.types import Encoding, M3Weights, SparseVector
from tests.conftest import wait_started
from tests.fake_backend import DIM, FakeBackend


def sparse(ids: list[int], values: list[float]) -> SparseVector:
    return SparseVector(np.array(ids, dtype=np.int64), np.array(values, dtype=np.float32))


def rows(*vectors: list[float]) -> np.ndarray:
    return np.array(vectors, dtype=np.float32)


def test_lexical_score_sums_products_of_shared_token_ids() -> None:
    query = sparse([1, 5, 9], [0.5, 1.0, 2.0])
    document = sparse([5, 9, 12], [2.0, 0.25, 3.0])
    assert lexical_score(query, document) == pytest.approx(1.0 * 2.0 + 2.0 * 0.25)
    assert lexical_score(query, sparse([2, 3], [1.0, 1.0])) == 0.0
    assert lexical_score(sparse([], []), document) == 0.0


def test_colbert_score_is_the_mean_of_each_query_vectors_best_match() -> None:
    query = rows([1.0, 0.0], [0.0, 1.0])
    document = rows([0.6, 0.8], [1.0, 0.0])
    assert colbert_score(query, document) == pytest.approx((1.0 + 0.8) / 2)


def test_colbert_score_sees_only_the_documents_vectors() -> None:
    # No padding vector's 0 beside them: the best of negative dot products stays negative.
    assert colbert_score(rows([-1.0, 0.0]), rows([1.0, 0.0], [0.6, -0.8])) == pytest.approx(-0.6)


def test_dense_scores_are_dot_products() -> None:
    got = dense_scores(np.array([0.6, 0.8], np.float32), rows([1.0, 0.0], [0.6, 0.8]))
    np.testing.assert_allclose(got, [0.6, 1.0], rtol=1e-6)


def test_weighted_means_are_normalised_by_their_weights() -> None:
    query = (np.array([1.0, 0.0], np.float32), sparse([4], [2.0]), rows([1.0, 0.0]))
    documents = (rows([0.6, 0.8]), [sparse([4], [0.5])], [rows([0.0, 1.0], [0.8, 0.6])])
    scores = m3_scores(query, documents, M3Weights(dense=0.4, sparse=0.2, colbert=0.4), 7)
    dense, lexical, colbert = 0.6, 1.0, 0.8
    np.testing.assert_allclose(scores.dense, [dense], rtol=1e-6)
    np.testing.assert_allclose(scores.sparse, [lexical], rtol=1e-6)
    np.testing.assert_allclose(scores.colbert, [colbert], rtol=1e-6)
    np.testing.assert_allclose(scores.sparse_dense, [(0.2 * lexical + 0.4 * dense) / 0.6])
    expected = (0.4 * colbert + 0.2 * lexical + 0.4 * dense) / 1.0
    np.testing.assert_allclose(scores.colbert_sparse_dense, [expected], rtol=1e-6)
    assert scores.prompt_tokens == 7
    colbert_only = m3_scores(query, documents, M3Weights(dense=0, sparse=0, colbert=2), 7)
    assert np.isnan(colbert_only.sparse_dense).all()  # FlagEmbedding's 0 / 0
    np.testing.assert_allclose(colbert_only.colbert_sparse_dense, [colbert], rtol=1e-6)


class ColbertBackend(FakeBackend):
    """The fake's dense and lexical heads, and one ColBERT vector a text: e1 for a text
    that starts with "q", else (0.6, 0.8, 0, ...)."""

    async def encode(self, texts: Sequence[str], outputs: frozenset[Output]) -> Encoding:
        encoding = await super().encode(texts, outputs)
        colbert = []
        for text in texts:
            row = np.zeros((1, DIM), np.float32)
            row[0, :2] = (1.0, 0.0) if text.startswith("q") else (0.6, 0.8)
            colbert.append(row)
        return Encoding(
            token_count=encoding.token_count,
            dense=encoding.dense,
            lexical=encoding.lexical,
            colbert=tuple(colbert),
        )


@pytest.fixture
def client() -> Iterator[TestClient[Litestar]]:
    settings = Settings(max_batch_size=4, max_text_chars=50)
    backend = ColbertBackend()
    engine = InferenceEngine(settings, {op: [backend] for op in Operation})
    with TestClient(create_app(settings, engine)) as test_client:
        wait_started(test_client)
        yield test_client


def test_route_answers_every_score_in_input_order(client: TestClient[Litestar]) -> None:
    # The fake: dense vectors all alike (dense 1); lexical weights {len: 1, 7: 2}.
    response = client.post(
        "/v1/m3-score", json={"query": "qq", "documents": ["ab", "abcd"], "weights": [0, 0, 1]}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "BAAI/bge-m3"  # EMBEDDING_SERVED_NAME
    assert answer["weights"] == [0, 0, 1]
    assert answer["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    first, second = answer["results"]
    assert (first["index"], second["index"]) == (0, 1)
    assert first["dense"] == pytest.approx(1.0)
    assert first["sparse"] == pytest.approx(1 * 1 + 2 * 2)  # ids 2 and 7 shared
    assert second["sparse"] == pytest.approx(2 * 2)
    assert first["colbert"] == pytest.approx(0.6)
    assert first["sparse+dense"] is None  # both its weights 0
    assert first["colbert+sparse+dense"] == pytest.approx(0.6)


def test_route_default_weights_are_flagembeddings(client: TestClient[Litestar]) -> None:
    response = client.post("/v1/m3-score", json={"query": "qq", "documents": ["ab"]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["weights"] == [0.4, 0.2, 0.4]
    result = answer["results"][0]
    assert result["sparse+dense"] == pytest.approx((0.4 * 1.0 + 0.2 * 5.0) / 0.6)
    assert result["colbert+sparse+dense"] == pytest.approx(0.4 * 1.0 + 0.2 * 5.0 + 0.4 * 0.6)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"query": "q", "documents": ["a"], "weights": [1, 1]}, 422, "weights"),
        ({"query": "q", "documents": ["a"], "weights": [1, 1, 1, 1]}, 422, "weights"),
        ({"query": "q", "documents": ["a"], "weights": [1, -0.5, 1]}, 422, "weights"),
        ({"query": "q", "documents": ["a"], "weights": [0, 0, 0]}, 422, "weights"),
        ({"query": "q", "documents": ["a"], "weights": "even"}, 422, "weights"),
        ({"query": " ", "documents": ["a"]}, 422, "query"),
        ({"query": "q", "documents": []}, 422, "documents"),
        ({"query": "q", "documents": ["a", "\u200b"]}, 422, "documents[1]"),
        ({"query": "q", "documents": ["a"] * 5}, 413, "documents"),
        ({"query": "q" * 51, "documents": ["a"]}, 413, "query"),
        ({"documents": ["a"]}, 422, None),
    ],
)
def test_bad_input_is_refused_in_the_envelope(
    client: TestClient[Litestar], body: dict[str, object], status: int, param: str | None
) -> None:
    response = client.post("/v1/m3-score", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if param is not None:
        assert param.split("[")[0] in error["message"]


def test_weights_must_be_finite() -> None:
    backend = ColbertBackend()
    engine = InferenceEngine(Settings(), {op: [backend] for op in Operation})
    asyncio.run(engine.start())
    with pytest.raises(InvalidInput, match="finite") as info:
        asyncio.run(engine.m3_score("q", ["a"], weights=[float("inf"), 0.0, 1.0]))
    assert info.value.param == "weights"
    assert backend.calls == 0


def test_not_served_is_the_same_error_as_the_sparse_routes() -> None:
    settings = Settings()
    backend = FakeBackend()
    engine = InferenceEngine(settings, {Operation.EMBED: [backend], Operation.RERANK: [backend]})
    with TestClient(create_app(settings, engine)) as test_client:
        wait_started(test_client)
        ours = test_client.post("/v1/m3-score", json={"query": "q", "documents": ["a"]})
        sparse_route = test_client.post("/v1/sparse-embeddings", json={"input": ["a"]})
        assert ours.status_code == sparse_route.status_code == 503
        assert ours.json() == sparse_route.json()
        assert "not served" in ours.json()["error"]["message"]
