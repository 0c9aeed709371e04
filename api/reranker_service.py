"""The BAAI reranker service's dialect: ``POST /rerank`` with ``{query, passage, normalize}``
(one score) and ``POST /rerank/batch`` with ``{pairs, normalize}`` (scores in input order).

``normalize`` (default false, as there) answers each pair's probability (the sigmoid
of its logit, as the engine gives it) instead of the logit. A batch is scored in shared
forward passes, not pair by pair.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, post

from api.disconnect import unless_disconnected
from api.docs import answers, sends
from api.errors import ERROR_RESPONSES
from api.fields import Text
from engine.inference import InferenceEngine

__all__ = ["PairRerankRequest", "RerankerServiceController", "rerank"]


class PairRerankRequest(msgspec.Struct, kw_only=True):
    query: Text
    passage: Text
    normalize: bool = False


class Pair(msgspec.Struct, kw_only=True):
    query: Text
    passage: Text


class BatchRerankRequest(msgspec.Struct, kw_only=True):
    pairs: Annotated[list[Pair], msgspec.Meta(min_length=1)]
    normalize: bool = False


class PairRerankResponse(msgspec.Struct, kw_only=True):
    score: float
    normalized: bool
    query_length: int  # characters, as the reranker service counts them
    passage_length: int


class BatchRerankResponse(msgspec.Struct, kw_only=True):
    scores: list[float]
    normalized: bool
    pairs_count: int


async def _scores(
    request: Request[Any, Any, Any],
    engine: InferenceEngine,
    pairs: list[tuple[str, str]],
    normalize: bool,
    field: str | None,
) -> list[float]:
    scored = await unless_disconnected(request, engine.score_pairs(pairs, field=field))
    values = scored.probabilities if normalize else scored.logits
    return [float(v) for v in values]


async def rerank(
    request: Request[Any, Any, Any], data: PairRerankRequest, engine: InferenceEngine
) -> PairRerankResponse:
    (score,) = await _scores(
        request, engine, [(data.query, data.passage)], data.normalize, field=None
    )
    return PairRerankResponse(
        score=score,
        normalized=data.normalize,
        query_length=len(data.query),
        passage_length=len(data.passage),
    )


_BATCH_ASKED = sends(
    {
        "pairs": [
            {"query": "What is BGE M3?", "passage": "BGE M3 is an embedding model."},
            {"query": "Where is Paris?", "passage": "Paris is in France."},
        ],
        "normalize": True,
    }
)
_BATCH_ANSWER = {"scores": [0.9804, 0.9911], "normalized": True, "pairs_count": 2}


class RerankerServiceController(Controller):
    tags = ("BAAI reranker service",)

    @post(
        "/rerank/batch",
        status_code=200,
        responses=answers(BatchRerankResponse, _BATCH_ANSWER, ERROR_RESPONSES),
        raises=[],
        summary="Scores of (query, passage) pairs, in input order (BAAI reranker service)",
    )
    async def rerank_batch(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[BatchRerankRequest, _BATCH_ASKED],
        engine: InferenceEngine,
    ) -> BatchRerankResponse:
        pairs = [(pair.query, pair.passage) for pair in data.pairs]
        scores = await _scores(request, engine, pairs, data.normalize, field="pairs")
        return BatchRerankResponse(scores=scores, normalized=data.normalize, pairs_count=len(pairs))
