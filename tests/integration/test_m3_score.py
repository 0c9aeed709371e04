"""``POST /v1/m3-score`` on the live server equals FlagEmbedding's
``BGEM3FlagModel.compute_score`` on the same folder, for several queries and weights."""

from __future__ import annotations

import math

import cohere
import httpx
import numpy as np
import pytest

from tests.conftest import ModelDirs, Server
from tests.reference import m3_score_reference
from tests.texts import DOCUMENTS, LONG_TEXT, QUERY

# float32 heads from other passes (padding, batch shapes), summed in another order. The
# tiny model's lexical weights run to 7 (bge-m3's to about 0.3), so its sparse scores, sums
# of tens of products, are in the hundreds: their float32 noise is relative, ~2e-5 seen.
RTOL = 1e-4
ATOL = 2e-5
MODES = ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")

# QUERY has no lexical weight in the tiny model (sparse 0 throughout); the others share
# tokens with the documents, and LONG_TEXT is cut to the model's 512 tokens both ways.
QUERIES = [QUERY, "a dog in the river", DOCUMENTS[5], LONG_TEXT]
# (what the route is sent, what compute_score is given): the route's default is
# FlagEmbedding's README's weights, compute_score's own ([1, 1, 1]) the route's [1, 1, 1].
WEIGHTS: list[tuple[list[float] | None, list[float] | None]] = [
    (None, [0.4, 0.2, 0.4]),
    ([1.0, 1.0, 1.0], None),
    ([0.7, 0.3, 0.0], [0.7, 0.3, 0.0]),
    ([0.0, 0.0, 1.0], [0.0, 0.0, 1.0]),  # sparse+dense is 0 / 0: NaN there, null here
]


@pytest.fixture(scope="module")
def expected(models: ModelDirs) -> list[dict[str, list[float]]]:
    pairs = [(query, document) for query in QUERIES for document in DOCUMENTS]
    return m3_score_reference(models.m3, pairs, [theirs for _, theirs in WEIGHTS])


@pytest.mark.parametrize("weight_set", range(len(WEIGHTS)))
def test_scores_equal_compute_score(
    client: httpx.Client, expected: list[dict[str, list[float]]], weight_set: int
) -> None:
    ours, _ = WEIGHTS[weight_set]
    reference = expected[weight_set]
    for position, query in enumerate(QUERIES):
        body: dict[str, object] = {"query": query, "documents": DOCUMENTS}
        if ours is not None:
            body["weights"] = ours
        response = client.post("/v1/m3-score", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["weights"] == (ours or [0.4, 0.2, 0.4])
        assert answer["usage"]["prompt_tokens"] > len(DOCUMENTS)
        results = answer["results"]
        assert [r["index"] for r in results] == list(range(len(DOCUMENTS)))
        these = slice(position * len(DOCUMENTS), (position + 1) * len(DOCUMENTS))
        for mode in MODES:
            theirs = reference[mode][these]
            got = [r[mode] for r in results]
            if all(math.isnan(s) for s in theirs):
                assert got == [None] * len(DOCUMENTS), mode
                continue
            np.testing.assert_allclose(got, theirs, rtol=RTOL, atol=ATOL, err_msg=mode)


def test_the_comparison_has_teeth(expected: list[dict[str, list[float]]]) -> None:
    reference = expected[0]
    assert sum(s > 0 for s in reference["sparse"]) > len(DOCUMENTS)
    for mode in ("dense", "colbert"):
        assert len(set(np.round(reference[mode], 4))) > len(QUERIES) * len(DOCUMENTS) // 2


def test_model_name_is_checked(client: httpx.Client) -> None:
    body = {"query": "q", "documents": ["a"], "model": "text-embedding-3-small"}
    response = client.post("/v1/m3-score", json=body)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["param"] == "model"


RANKING_ROUTES = [
    ("/v1/rerank", "BAAI/bge-m3"),  # Cohere v1
    ("/v2/rerank", "bge-m3"),  # Cohere v2, by the name's last segment
    ("/rerank", "BAAI/bge-m3"),  # Infinity
]


@pytest.mark.parametrize(("route", "model"), RANKING_ROUTES)
def test_rerank_routes_rank_by_bge_m3_when_it_is_named(
    client: httpx.Client, expected: list[dict[str, list[float]]], route: str, model: str
) -> None:
    """Naming the embedding model on a rerank route ranks by compute_score's weighted sum
    at its default weights, best first, instead of the cross-encoder's probability."""
    reference = expected[0]["colbert+sparse+dense"]
    for position, query in enumerate(QUERIES):
        body = {"query": query, "documents": DOCUMENTS, "model": model, "top_n": 5}
        response = client.post(route, json=body)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        theirs = reference[position * len(DOCUMENTS) : (position + 1) * len(DOCUMENTS)]
        best_first = sorted(range(len(DOCUMENTS)), key=lambda i: -theirs[i])[:5]
        assert [r["index"] for r in results] == best_first
        np.testing.assert_allclose(
            [r["relevance_score"] for r in results],
            [theirs[i] for i in best_first],
            rtol=RTOL,
            atol=ATOL,
        )


def test_rerank_routes_keep_the_cross_encoder_by_default(
    client: httpx.Client, expected: list[dict[str, list[float]]]
) -> None:
    body: dict[str, object] = {"query": QUERIES[1], "documents": DOCUMENTS}
    m3 = client.post("/v1/rerank", json={**body, "model": "BAAI/bge-m3"}).json()
    for named in ({}, {"model": "BAAI/bge-reranker-v2-m3"}):
        answer = client.post("/v1/rerank", json={**body, **named}).json()
        assert answer["model"] == "BAAI/bge-reranker-v2-m3"
        # Probabilities of the cross-encoder: in [0, 1], and not bge-m3's scores.
        scores = {r["index"]: r["relevance_score"] for r in answer["results"]}
        assert all(0 <= s <= 1 for s in scores.values())
        assert scores != {r["index"]: r["relevance_score"] for r in m3["results"]}
    assert m3["model"] == "BAAI/bge-m3"


def test_cohere_sdk_reranks_by_bge_m3(
    server: Server, expected: list[dict[str, list[float]]]
) -> None:
    sdk = cohere.ClientV2(api_key="unused", base_url=server.url)
    answer = sdk.rerank(model="BAAI/bge-m3", query=QUERIES[2], documents=DOCUMENTS, top_n=3)
    reference = expected[0]["colbert+sparse+dense"][2 * len(DOCUMENTS) : 3 * len(DOCUMENTS)]
    best_first = sorted(range(len(DOCUMENTS)), key=lambda i: -reference[i])[:3]
    assert [r.index for r in answer.results] == best_first
