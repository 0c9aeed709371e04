"""Cohere dialect: ``POST /v1/rerank`` (the shape bge_inference_service clients parse)
and ``POST /v2/rerank`` (Cohere's v2: ``cohere.ClientV2``).

Scores are the sigmoid of the cross-encoder logit, in [0, 1]; ``raw_scores``
returns the logit itself, as bge_inference_service did.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, post

from api.disconnect import unless_disconnected
from api.docs import answers, sends
from api.errors import ERROR_RESPONSES
from api.fields import Text, Texts
from api.usage import Usage
from engine.inference import InferenceEngine
from engine.types import Operation

__all__ = ["CohereController"]


class Document(msgspec.Struct, kw_only=True, omit_defaults=True):
    text: Text
    id: str | None = None
    meta: dict[str, Any] | None = None


class RerankRequest(msgspec.Struct, kw_only=True):
    query: Text
    documents: Annotated[list[Text | Document], msgspec.Meta(min_length=1)]
    top_n: Annotated[int, msgspec.Meta(ge=1)] | None = None
    return_documents: bool = False
    model: str | None = None
    raw_scores: bool = False  # ours: the logit instead of its sigmoid

    def document(self, index: int) -> Document:
        doc = self.documents[index]
        return Document(text=doc) if isinstance(doc, str) else doc


class RerankResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    relevance_score: float
    document: Document | None = None


class RerankResponse(msgspec.Struct, kw_only=True):
    id: str
    model: str
    results: list[RerankResult]
    usage: Usage


class RerankV2Request(msgspec.Struct, kw_only=True):
    model: str | None = None
    query: Text
    documents: Texts
    top_n: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_tokens_per_doc: Annotated[int, msgspec.Meta(ge=1)] | None = None
    raw_scores: bool = False  # ours


class RerankV2Result(msgspec.Struct, kw_only=True):
    index: int
    relevance_score: float


class ApiVersion(msgspec.Struct, kw_only=True):
    version: str = "2"


class BilledUnits(msgspec.Struct, kw_only=True):
    search_units: int


class Meta(msgspec.Struct, kw_only=True):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: dict[str, int]


class RerankV2Response(msgspec.Struct, kw_only=True):
    id: str
    results: list[RerankV2Result]
    meta: Meta


_DOCUMENTS = ["BGE M3 is an embedding model.", "Paris is in France.", "Rerankers score pairs."]
_V1_ASKED = sends(
    {
        "model": "BAAI/bge-reranker-v2-m3",
        "query": "What is BGE M3?",
        "documents": _DOCUMENTS,
        "top_n": 2,
        "return_documents": True,
    }
)
_V1_ANSWER = {
    "id": "5b5f4a0c-3d0e-4b8e-9a65-1d0c2f3e4a5b",
    "model": "BAAI/bge-reranker-v2-m3",
    "results": [
        {"index": 0, "relevance_score": 0.9804, "document": {"text": _DOCUMENTS[0]}},
        {"index": 2, "relevance_score": 0.0412, "document": {"text": _DOCUMENTS[2]}},
    ],
    "usage": {"prompt_tokens": 41, "total_tokens": 41},
}
_V2_ASKED = sends(
    {
        "model": "bge-reranker-v2-m3",
        "query": "What is BGE M3?",
        "documents": _DOCUMENTS,
        "top_n": 2,
        "max_tokens_per_doc": 4096,
    }
)
_V2_ANSWER = {
    "id": "5b5f4a0c-3d0e-4b8e-9a65-1d0c2f3e4a5b",
    "results": [{"index": 0, "relevance_score": 0.9804}, {"index": 2, "relevance_score": 0.0412}],
    "meta": {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": 41},
    },
}


class CohereController(Controller):
    tags = ("Cohere",)

    @post(
        "/v1/rerank",
        status_code=200,
        responses=answers(RerankResponse, _V1_ANSWER, ERROR_RESPONSES),
        raises=[],
        summary="Rerank documents against a query (Cohere v1-compatible)",
    )
    async def rerank(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[RerankRequest, _V1_ASKED],
        engine: InferenceEngine,
    ) -> RerankResponse:
        model = engine.served_model(Operation.RERANK, data.model)
        texts = [doc if isinstance(doc, str) else doc.text for doc in data.documents]
        ranking = await unless_disconnected(
            request, engine.rerank(data.query, texts, top_n=data.top_n)
        )
        return RerankResponse(
            id=str(uuid.uuid4()),
            model=model,
            results=[
                RerankResult(
                    index=ranked.index,
                    relevance_score=ranked.logit if data.raw_scores else ranked.score,
                    document=data.document(ranked.index) if data.return_documents else None,
                )
                for ranked in ranking.results
            ],
            usage=Usage(prompt_tokens=ranking.prompt_tokens, total_tokens=ranking.prompt_tokens),
        )

    @post(
        "/v2/rerank",
        status_code=200,
        responses=answers(RerankV2Response, _V2_ANSWER, ERROR_RESPONSES),
        raises=[],
        summary="Rerank documents against a query (Cohere v2-compatible)",
    )
    async def rerank_v2(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[RerankV2Request, _V2_ASKED],
        engine: InferenceEngine,
    ) -> RerankV2Response:
        engine.served_model(Operation.RERANK, data.model)
        ranking = await unless_disconnected(
            request,
            engine.rerank(
                data.query,
                data.documents,
                top_n=data.top_n,
                max_tokens_per_doc=data.max_tokens_per_doc,
            ),
        )
        return RerankV2Response(
            id=str(uuid.uuid4()),
            results=[
                RerankV2Result(
                    index=ranked.index,
                    relevance_score=ranked.logit if data.raw_scores else ranked.score,
                )
                for ranked in ranking.results
            ],
            meta=Meta(
                api_version=ApiVersion(),
                # Cohere bills one search unit per query of up to 100 documents.
                billed_units=BilledUnits(search_units=-(-len(data.documents) // 100)),
                tokens={"input_tokens": ranking.prompt_tokens},
            ),
        )
