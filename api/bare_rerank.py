"""``POST /rerank``: one path, three dialects, told apart by the body's fields.

``passage`` is the BAAI reranker service's one pair, ``texts`` is TEI's rerank,
``documents`` is Infinity's (whose clients call the bare path; Cohere's SDKs call
``/v1/rerank`` and ``/v2/rerank``). Each body is then decoded as strictly as on
its dialect's own routes, and errors come back in that dialect's shape.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, post
from litestar.openapi.spec import Example
from litestar.params import Body

from api import infinity, reranker_service, tei
from api.docs import answers
from api.errors import EITHER_ERROR_RESPONSES, problem_of
from api.metrics import DIALECT_KEY
from engine.errors import EngineError, InvalidInput
from engine.inference import InferenceEngine

__all__ = ["bare_rerank"]

T = TypeVar("T")

_SHAPES = (
    "`{query, passage, normalize}` (BAAI reranker service), `{query, texts}` (TEI) "
    "or `{query, documents}` (Infinity)"
)

_EXAMPLES = [
    Example(
        summary="Infinity (answers {object, results, model, usage, id, created})",
        value={"query": "What is BGE M3?", "documents": ["BGE M3 is an embedding model.", "Hi"]},
    ),
    Example(
        summary="TEI (answers [{index, score}], best first)",
        value={"query": "What is BGE M3?", "texts": ["BGE M3 is an embedding model.", "Hi"]},
    ),
    Example(
        summary="BAAI reranker service (answers {score, normalized, ...})",
        value={"query": "What is BGE M3?", "passage": "BGE M3 is an embedding model."},
    ),
]


@post(
    ["/rerank", "/reranker/rerank"],
    status_code=200,
    # The answer, errors included, is in the shape of the dialect the body speaks.
    responses=answers(
        infinity.InfinityRerankResponse | list[tei.Rank] | reranker_service.PairRerankResponse,
        infinity.RERANK_ANSWER,
        EITHER_ERROR_RESPONSES,
    ),
    raises=[],
    tags=["Infinity", "TEI", "BAAI reranker service"],
    summary="Rerank in the dialect the body speaks: Infinity, TEI or the BAAI reranker service",
    description=f"The body is one of {_SHAPES}; anything else is answered 422. Each "
    "answers, errors included, in its own dialect's shape (TEI: a bare array, and "
    '`{"error", "error_type"}` errors).',
)
async def bare_rerank(
    request: Request[Any, Any, Any],
    data: dict[str, Any] = Body(  # noqa: B008 - Litestar reads the body's docs from here
        title="Rerank request", description=f"One of {_SHAPES}", examples=_EXAMPLES
    ),
    *,
    engine: InferenceEngine,
) -> Response[Any]:
    if "passage" in data:
        request.scope[DIALECT_KEY] = "BAAI reranker service"  # type: ignore[literal-required]
        pair = _decoded(data, reranker_service.PairRerankRequest)
        return Response(await reranker_service.rerank(request, pair, engine))
    if "texts" in data:
        request.scope[DIALECT_KEY] = "TEI"  # type: ignore[literal-required]
        try:
            return await tei.rerank(request, _decoded(data, tei.TeiRerankRequest), engine)
        except EngineError as exc:
            return problem_of(exc).tei()
    if "documents" in data:
        request.scope[DIALECT_KEY] = "Infinity"  # type: ignore[literal-required]
        ranked = _decoded(data, infinity.InfinityRerankRequest)
        return Response(await infinity.rerank(request, ranked, engine))
    raise InvalidInput(f"the body is none of the rerank shapes this route takes: {_SHAPES}")


def _decoded(data: dict[str, Any], kind: type[T]) -> T:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        problem = problem_of(exc)
        raise InvalidInput(problem.message, param=problem.param) from exc
