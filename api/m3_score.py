"""``POST /v1/m3-score``: bge-m3's own three-way score of documents against a query.

FlagEmbedding's ``BGEM3FlagModel.compute_score`` as a route: a reranking stage with no
cross-encoder, at bi-encoder cost (one hybrid pass per text). Each result has the three
heads' scores and FlagEmbedding's two weighted means, named as its dictionary names
them (``sparse+dense``, ``colbert+sparse+dense``); results are in input order, as
``compute_score`` returns them, each with its ``index``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec
from litestar import Request, post

from api.disconnect import unless_disconnected
from api.docs import answers, sends
from api.errors import ERROR_RESPONSES
from api.fields import Text, Texts
from api.usage import Usage
from engine.inference import InferenceEngine
from engine.types import M3Scores, Operation

__all__ = ["m3_score"]

Weights = Annotated[
    list[float],
    msgspec.Meta(
        description="FlagEmbedding's weights_for_different_modes: [dense, sparse, colbert], "
        "each >= 0, not all zero; default [0.4, 0.2, 0.4]"
    ),
]


class M3ScoreRequest(msgspec.Struct, kw_only=True):
    query: Text
    documents: Texts
    model: str | None = None
    weights: Weights | None = None


class M3ScoreResult(msgspec.Struct, kw_only=True):
    index: int
    dense: float
    sparse: float
    colbert: float
    # null where the dense and sparse weights are both zero (FlagEmbedding's 0 / 0).
    sparse_dense: float | None = msgspec.field(name="sparse+dense")
    colbert_sparse_dense: float = msgspec.field(name="colbert+sparse+dense")


class M3ScoreResponse(msgspec.Struct, kw_only=True):
    model: str
    results: list[M3ScoreResult]
    weights: list[float]
    usage: Usage


_ASKED = sends(
    {
        "query": "What is BGE M3?",
        "documents": [
            "BGE M3 is an embedding model supporting dense, lexical and multi-vector retrieval.",
            "BM25 is a bag-of-words retrieval function.",
        ],
        "weights": [0.4, 0.2, 0.4],
    }
)
_ANSWER = {
    "model": "BAAI/bge-m3",
    "results": [
        {
            "index": 0,
            "dense": 0.6259,
            "sparse": 0.1956,
            "colbert": 0.7797,
            "sparse+dense": 0.4825,
            "colbert+sparse+dense": 0.6014,
        },
        {
            "index": 1,
            "dense": 0.3477,
            "sparse": 0.0,
            "colbert": 0.4589,
            "sparse+dense": 0.2318,
            "colbert+sparse+dense": 0.3226,
        },
    ],
    "weights": [0.4, 0.2, 0.4],
    "usage": {"prompt_tokens": 41, "total_tokens": 41},
}


@post(
    "/v1/m3-score",
    status_code=200,
    responses=answers(M3ScoreResponse, _ANSWER, ERROR_RESPONSES),
    raises=[],
    tags=["bge-m3"],
    summary="bge-m3's dense, sparse and ColBERT scores of documents against a query, and "
    "their weighted means (FlagEmbedding's BGEM3FlagModel.compute_score)",
)
async def m3_score(
    request: Request[Any, Any, Any],
    data: Annotated[M3ScoreRequest, _ASKED],
    engine: InferenceEngine,
) -> M3ScoreResponse:
    model = engine.served_model(Operation.LEXICAL_COLBERT, data.model)
    scores = await unless_disconnected(
        request, engine.m3_score(data.query, data.documents, weights=data.weights)
    )
    weights = scores.weights
    return M3ScoreResponse(
        model=model,
        results=_results(scores),
        weights=[weights.dense, weights.sparse, weights.colbert],
        usage=Usage(prompt_tokens=scores.prompt_tokens, total_tokens=scores.prompt_tokens),
    )


def _results(scores: M3Scores) -> list[M3ScoreResult]:
    return [
        M3ScoreResult(
            index=i,
            dense=dense,
            sparse=sparse,
            colbert=colbert,
            sparse_dense=None if math.isnan(sparse_dense) else sparse_dense,
            colbert_sparse_dense=combined,
        )
        for i, (dense, sparse, colbert, sparse_dense, combined) in enumerate(
            zip(
                scores.dense.tolist(),
                scores.sparse.tolist(),
                scores.colbert.tolist(),
                scores.sparse_dense.tolist(),
                scores.colbert_sparse_dense.tolist(),
                strict=True,
            )
        )
    ]
