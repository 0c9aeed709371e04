"""Infinity dialect (infinity_emb 0.0.77): ``POST /embeddings``, ``GET /models``, and
``POST /rerank`` with ``documents`` — the routes without ``/v1`` that Infinity's
clients (``infinity-client``, a Go client calling ``${endpoint}/rerank``) call.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, post

from api.disconnect import unless_disconnected
from api.docs import VECTOR, answers, sends
from api.errors import ERROR_RESPONSES
from api.fields import Text, Texts
from api.openai import Embedding, EmbeddingRequest, create_embeddings
from api.usage import Usage
from engine.inference import InferenceEngine
from engine.types import Operation

__all__ = ["RERANK_ANSWER", "InfinityController", "InfinityRerankRequest", "rerank"]

# What Infinity's clients send when the caller names no model.
_UNNAMED = "default/not-specified"


def _named(model: str | None) -> str | None:
    return None if model == _UNNAMED else model


class InfinityEmbeddingRequest(EmbeddingRequest, kw_only=True):
    dimensions: Annotated[int, msgspec.Meta(ge=0)] | None = None  # Infinity: 0 is "all"
    modality: Literal["text"] = "text"


class InfinityEmbeddingResponse(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage
    id: str
    created: int


class InfinityRerankRequest(msgspec.Struct, kw_only=True):
    query: Text
    documents: Texts
    return_documents: bool = False
    raw_scores: bool = False
    model: str | None = None
    top_n: Annotated[int, msgspec.Meta(ge=1)] | None = None


class RerankObject(msgspec.Struct, kw_only=True, omit_defaults=True):
    relevance_score: float
    index: int
    document: str | None = None


class InfinityRerankResponse(msgspec.Struct, kw_only=True):
    object: Literal["rerank"] = "rerank"
    results: list[RerankObject]
    model: str
    usage: Usage
    id: str
    created: int


class InfinityModel(msgspec.Struct, kw_only=True):
    id: str
    stats: dict[str, Any]
    object: Literal["model"] = "model"
    owned_by: Literal["infinity"] = "infinity"  # Infinity's schema allows no other value
    created: int
    backend: str = ""
    capabilities: list[str]


class InfinityModels(msgspec.Struct, kw_only=True):
    data: list[InfinityModel]
    object: Literal["list"] = "list"


async def rerank(
    request: Request[Any, Any, Any], data: InfinityRerankRequest, engine: InferenceEngine
) -> InfinityRerankResponse:
    model, by = engine.ranker(_named(data.model))
    ranking = await unless_disconnected(
        request, engine.rerank(data.query, data.documents, top_n=data.top_n, by=by)
    )
    return InfinityRerankResponse(
        results=[
            RerankObject(
                relevance_score=r.logit if data.raw_scores else r.score,
                index=r.index,
                document=data.documents[r.index] if data.return_documents else None,
            )
            for r in ranking.results
        ],
        model=model,
        usage=Usage(prompt_tokens=ranking.prompt_tokens, total_tokens=ranking.prompt_tokens),
        id=f"infinity-{uuid.uuid4()}",
        created=int(time.time()),
    )


_EMBEDDINGS_ASKED = sends(
    {"model": "default/not-specified", "input": ["What is BGE M3?"], "modality": "text"}
)
_EMBEDDINGS_ANSWER = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": VECTOR}],
    "model": "BAAI/bge-m3",
    "usage": {"prompt_tokens": 9, "total_tokens": 9},
    "id": "infinity-5b5f4a0c-3d0e-4b8e-9a65-1d0c2f3e4a5b",
    "created": 1767225600,
}
RERANK_ANSWER = {
    "object": "rerank",
    "results": [
        {"relevance_score": 0.9804, "index": 0, "document": "BGE M3 is an embedding model."},
        {"relevance_score": 0.0127, "index": 1, "document": "Hi"},
    ],
    "model": "BAAI/bge-reranker-v2-m3",
    "usage": {"prompt_tokens": 24, "total_tokens": 24},
    "id": "infinity-5b5f4a0c-3d0e-4b8e-9a65-1d0c2f3e4a5b",
    "created": 1767225600,
}
_MODELS_ANSWER = {
    "object": "list",
    "data": [
        {
            "id": "BAAI/bge-m3",
            "stats": {},
            "object": "model",
            "owned_by": "infinity",
            "created": 1767225600,
            "backend": "bge-serve",
            "capabilities": ["embed"],
        }
    ],
}


class InfinityController(Controller):
    tags = ("Infinity",)

    @post(
        "/embeddings",
        status_code=200,
        responses=answers(InfinityEmbeddingResponse, _EMBEDDINGS_ANSWER, ERROR_RESPONSES),
        raises=[],
        summary="Dense embeddings (Infinity-compatible: OpenAI's shape without /v1)",
    )
    async def embeddings(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[InfinityEmbeddingRequest, _EMBEDDINGS_ASKED],
        engine: InferenceEngine,
    ) -> InfinityEmbeddingResponse:
        answer = await create_embeddings(
            request, data, engine, dimensions=data.dimensions or None, model=_named(data.model)
        )
        return InfinityEmbeddingResponse(
            data=answer.data,
            model=answer.model,
            usage=answer.usage,
            id=f"infinity-{uuid.uuid4()}",
            created=int(time.time()),
        )

    @get(
        "/models",
        summary="Models this service serves (Infinity-compatible)",
        responses=answers(InfinityModels, _MODELS_ANSWER, {}),
    )
    async def models(self, engine: InferenceEngine) -> InfinityModels:
        created = int(time.time())
        capabilities: dict[str, list[str]] = {}
        for operation in sorted(engine.operations):
            what = "rerank" if operation is Operation.RERANK else "embed"
            capabilities.setdefault(engine.model_name(operation), []).append(what)
        return InfinityModels(
            data=[
                InfinityModel(
                    id=name,
                    stats={},
                    created=created,
                    backend="bge-serve",
                    capabilities=sorted(set(caps)),
                )
                for name, caps in capabilities.items()
            ]
        )
