"""Cohere dialect: ``POST /v1/rerank`` (the shape bge_inference_service clients parse)
and ``POST /v2/rerank`` (Cohere's v2: ``cohere.ClientV2``); ``POST /v1/embed`` and
``POST /v2/embed`` (``cohere.Client`` / ``ClientV2``, langchain-cohere, llama-index and
haystack's Cohere embedders).

Scores are the sigmoid of the cross-encoder logit, in [0, 1]; ``raw_scores``
returns the logit itself, as bge_inference_service did. A request whose ``model``
names the embedding model (``BAAI/bge-m3``) is ranked by bge-m3's own weighted sum of
its dense, sparse and ColBERT scores instead (``/v1/m3-score``'s
``colbert+sparse+dense``), with no cross-encoder.

Embeddings are bge-m3's dense vectors, the same as ``/v1/embeddings`` answers.
``input_type`` is accepted and changes nothing: bge-m3 embeds queries and documents
alike, with no prefix or instruction. ``embedding_types``: ``float``, ``base64``
(little-endian float32, as Cohere writes it), and the quantized ``int8``, ``uint8``,
``binary`` and ``ubinary`` as plain integer lists in Cohere's shape (how they are
computed: api/quantization.py; Cohere's answer has no place for int8's per-vector
scale, which cosine ranking does not need). ``truncate``: ``END`` cuts the end of a
text over the token limit, ``START`` its start (422 where a backend of the chain
cannot), ``NONE`` answers it 413; absent means the service's ``TRUNCATE`` (on:
``END``, Cohere's default).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

import msgspec
from litestar import Controller, Request, post

from api import quantization
from api.disconnect import unless_disconnected
from api.docs import VECTOR, answers, sends
from api.errors import ERROR_RESPONSES
from api.fields import Text, Texts
from api.usage import Usage
from api.vectors import vector_rows
from engine.errors import InputTooLarge, InvalidInput
from engine.inference import InferenceEngine
from engine.settings import Settings
from engine.types import DenseMatrix, Operation

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


# -- embed ------------------------------------------------------------------------------

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
InputType = Literal["search_document", "search_query", "classification", "clustering", "image"]
Truncate = Literal["NONE", "START", "END"]
EmbeddingTypes = Annotated[list[EmbeddingType], msgspec.Meta(min_length=1)]
# What a chain that cannot cut a text's start is told the client asked for.
_OPTION_FIELDS = {"truncate_left": ("truncate", "START (a long text keeps its end)")}


class EmbedRequest(msgspec.Struct, kw_only=True):
    # Every field may be null: langchain-cohere sends `"truncate": null` by default.
    texts: Texts | None = None
    images: list[str] | None = None
    model: str | None = None
    input_type: InputType | None = None
    embedding_types: EmbeddingTypes | None = None
    truncate: Truncate | None = None


class TextContent(msgspec.Struct, kw_only=True, tag="text", tag_field="type"):
    text: Text


class ImageUrlContent(msgspec.Struct, kw_only=True, tag="image_url", tag_field="type"):
    image_url: dict[str, Any] | None = None


class EmbedInput(msgspec.Struct, kw_only=True):
    content: Annotated[list[TextContent | ImageUrlContent], msgspec.Meta(min_length=1)]


class EmbedV2Request(msgspec.Struct, kw_only=True):
    model: str | None = None
    input_type: InputType | None = None
    texts: Texts | None = None
    images: list[str] | None = None
    inputs: Annotated[list[EmbedInput], msgspec.Meta(min_length=1)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    output_dimension: Annotated[int, msgspec.Meta(ge=1)] | None = None
    embedding_types: EmbeddingTypes | None = None
    truncate: Truncate | None = None
    priority: int | None = None  # accepted; requests are served in arrival order

    def texts_and_field(self) -> tuple[list[str], str]:
        """The texts to embed, and the field errors name them by."""
        if self.texts is not None and self.inputs is not None:
            raise InvalidInput("send `texts` or `inputs`, not both", param="inputs")
        if self.inputs is None:
            return _texts(self.texts, self.images), "texts"
        _refuse_images(self.images)
        texts: list[str] = []
        for position, item in enumerate(self.inputs):
            parts = item.content
            if not all(isinstance(part, TextContent) for part in parts):
                raise InvalidInput(
                    f"`inputs[{position}]` holds an image; this service embeds text only "
                    "(bge-m3 has no image encoder)",
                    param=f"inputs[{position}]",
                )
            if len(parts) != 1:
                raise InvalidInput(
                    f"`inputs[{position}]` has {len(parts)} parts; send one text per input "
                    "(or several inputs)",
                    param=f"inputs[{position}].content",
                )
            part = parts[0]
            assert isinstance(part, TextContent)
            texts.append(part.text)
        return texts, "inputs"


class EmbedBilledUnits(msgspec.Struct, kw_only=True):
    input_tokens: int


class EmbedMeta(msgspec.Struct, kw_only=True):
    api_version: ApiVersion
    billed_units: EmbedBilledUnits


class EmbeddingsByType(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Only the types asked for are present (Cohere's shape)."""

    float_: list[list[float]] | None = msgspec.field(default=None, name="float")
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64_: list[str] | None = msgspec.field(default=None, name="base64")


class EmbedFloatsResponse(msgspec.Struct, kw_only=True):
    """v1's answer when ``embedding_types`` is absent."""

    response_type: Literal["embeddings_floats"] = "embeddings_floats"
    id: str
    embeddings: list[list[float]]
    texts: list[str]
    meta: EmbedMeta


class EmbedByTypeResponse(msgspec.Struct, kw_only=True):
    """v2's answer, and v1's when ``embedding_types`` is given."""

    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"
    id: str
    embeddings: EmbeddingsByType
    texts: list[str]
    meta: EmbedMeta


def _refuse_images(images: list[str] | None) -> None:
    if images:
        raise InvalidInput(
            "`images`: this service embeds text only (bge-m3 has no image encoder)",
            param="images",
        )


def _texts(texts: list[str] | None, images: list[str] | None) -> list[str]:
    _refuse_images(images)
    if texts is None:
        raise InvalidInput("`texts` is required: the texts to embed", param="texts")
    return texts


@dataclass(frozen=True, slots=True)
class _Truncation:
    """What happens to a text over the token limit: cut (at its start or its end), or
    refused 413."""

    cut: bool
    from_start: bool = False

    @classmethod
    def of(cls, truncate: Truncate | None, settings: Settings) -> _Truncation:
        if truncate is None:
            return cls(cut=settings.truncate)
        return cls(cut=truncate != "NONE", from_start=truncate == "START")


def _check_output_dimension(engine: InferenceEngine, dimension: int) -> None:
    # The engine checks it too, but would name the field `dimensions`.
    native = engine.model_info(Operation.EMBED).dimension
    if native is not None and dimension > native:
        raise InvalidInput(
            f"`output_dimension` must be between 1 and {native}, got {dimension}",
            param="output_dimension",
        )


async def _cut_to(
    engine: InferenceEngine,
    texts: list[str],
    max_tokens: int,
    truncation: _Truncation,
    field: str,
) -> list[str]:
    """Each text cut to ``max_tokens`` tokens (special tokens not counted), at the end
    ``truncation`` says, or refused 413; the model's own limit is applied after."""
    if max_tokens >= engine.model_info(Operation.EMBED).max_tokens:
        return texts
    rows = await engine.tokens(texts, add_special_tokens=False, field=field)
    kept: list[str] = []
    for position, (text, row) in enumerate(zip(texts, rows, strict=True)):
        if len(row) <= max_tokens:
            kept.append(text)
            continue
        if not truncation.cut:
            raise InputTooLarge(
                f"`{field}[{position}]` has {len(row)} tokens; `max_tokens` is {max_tokens} "
                "and `truncate` is NONE",
                param=f"{field}[{position}]",
            )
        data = text.encode()
        if truncation.from_start:
            start = row[-max_tokens].start
            kept.append(text if start is None else data[start:].decode())
        else:
            stop = row[max_tokens - 1].stop
            kept.append(text if stop is None else data[:stop].decode())
    return kept


async def _dense(
    request: Request[Any, Any, Any],
    engine: InferenceEngine,
    texts: list[str],
    truncation: _Truncation,
    *,
    field: str,
    dimensions: int | None = None,
) -> tuple[DenseMatrix, int]:
    embedding = engine.embed_dense(
        texts,
        dimensions=dimensions,
        truncate=truncation.cut,
        field=field,
        truncate_left=truncation.from_start,
        option_fields=_OPTION_FIELDS,
    )
    return await unless_disconnected(request, embedding)


def _by_type(dense: DenseMatrix, kinds: Sequence[EmbeddingType]) -> EmbeddingsByType:
    """The types asked for, each computed once however often it was named."""
    asked = set(kinds)
    floats: list[list[float]] | None = dense.tolist() if "float" in asked else None
    base64s = cast("list[str]", vector_rows(dense, "base64")) if "base64" in asked else None
    return EmbeddingsByType(
        float_=floats,
        int8=quantization.int8(dense)[0].tolist() if "int8" in asked else None,
        uint8=quantization.uint8(dense)[0].tolist() if "uint8" in asked else None,
        binary=quantization.binary(dense).tolist() if "binary" in asked else None,
        ubinary=quantization.ubinary(dense).tolist() if "ubinary" in asked else None,
        base64_=base64s,
    )


def _meta(version: str, tokens: int) -> EmbedMeta:
    return EmbedMeta(
        api_version=ApiVersion(version=version),
        billed_units=EmbedBilledUnits(input_tokens=tokens),
    )


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


_TEXTS = ["What is BGE M3?", "Paris is in France."]
_V1_EMBED_ASKED = sends(
    {
        "model": "BAAI/bge-m3",
        "texts": _TEXTS,
        "input_type": "search_document",
        "embedding_types": ["float"],
        "truncate": "END",
    }
)
_V1_EMBED_ANSWER = {
    "response_type": "embeddings_by_type",
    "id": "5b5f4a0c-3d0e-4b8e-9a65-1d0c2f3e4a5b",
    "embeddings": {"float": [VECTOR, VECTOR]},
    "texts": _TEXTS,
    "meta": {"api_version": {"version": "1"}, "billed_units": {"input_tokens": 15}},
}
_V2_EMBED_ASKED = sends(
    {
        "model": "bge-m3",
        "texts": _TEXTS,
        "input_type": "search_query",
        "embedding_types": ["float", "base64"],
    }
)
_BASE64_VECTOR = "Vn2uPO7rQL0+6Fk8dEYUPQ=="  # VECTOR as little-endian float32
_V2_EMBED_ANSWER = {
    "response_type": "embeddings_by_type",
    "id": "5b5f4a0c-3d0e-4b8e-9a65-1d0c2f3e4a5b",
    "embeddings": {"float": [VECTOR, VECTOR], "base64": [_BASE64_VECTOR, _BASE64_VECTOR]},
    "texts": _TEXTS,
    "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 15}},
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
        model, by = engine.ranker(data.model)
        texts = [doc if isinstance(doc, str) else doc.text for doc in data.documents]
        ranking = await unless_disconnected(
            request, engine.rerank(data.query, texts, top_n=data.top_n, by=by)
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
        _, by = engine.ranker(data.model)
        ranking = await unless_disconnected(
            request,
            engine.rerank(
                data.query,
                data.documents,
                top_n=data.top_n,
                max_tokens_per_doc=data.max_tokens_per_doc,
                by=by,
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

    @post(
        "/v1/embed",
        status_code=200,
        responses=answers(
            EmbedFloatsResponse | EmbedByTypeResponse, _V1_EMBED_ANSWER, ERROR_RESPONSES
        ),
        raises=[],
        summary="Dense embeddings (Cohere v1-compatible)",
        description="`embedding_types` absent: `embeddings` is a list of float vectors "
        "(`embeddings_floats`); given: an object by type (`embeddings_by_type`). "
        "`input_type` changes nothing: bge-m3 takes no query or document prefix.",
    )
    async def embed(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[EmbedRequest, _V1_EMBED_ASKED],
        engine: InferenceEngine,
        settings: Settings,
    ) -> EmbedFloatsResponse | EmbedByTypeResponse:
        engine.served_model(Operation.EMBED, data.model)
        kinds = data.embedding_types or ["float"]
        truncation = _Truncation.of(data.truncate, settings)
        texts = _texts(data.texts, data.images)
        dense, tokens = await _dense(request, engine, texts, truncation, field="texts")
        if data.embedding_types is None:
            return EmbedFloatsResponse(
                id=str(uuid.uuid4()),
                embeddings=dense.tolist(),
                texts=texts,
                meta=_meta("1", tokens),
            )
        return EmbedByTypeResponse(
            id=str(uuid.uuid4()),
            embeddings=_by_type(dense, kinds),
            texts=texts,
            meta=_meta("1", tokens),
        )

    @post(
        "/v2/embed",
        status_code=200,
        responses=answers(EmbedByTypeResponse, _V2_EMBED_ANSWER, ERROR_RESPONSES),
        raises=[],
        summary="Dense embeddings (Cohere v2-compatible)",
        description="`texts`, or `inputs` of one text each. `embedding_types` defaults to "
        "`float`. `max_tokens` cuts each text to N tokens at the end `truncate` says (END, "
        "START; NONE refuses a longer text); `output_dimension` keeps the first N dimensions, "
        "renormalized, as `/v1/embeddings`' `dimensions` does. `input_type` changes nothing: "
        "bge-m3 takes no query or document prefix.",
    )
    async def embed_v2(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[EmbedV2Request, _V2_EMBED_ASKED],
        engine: InferenceEngine,
        settings: Settings,
    ) -> EmbedByTypeResponse:
        engine.served_model(Operation.EMBED, data.model)
        kinds = data.embedding_types or ["float"]
        truncation = _Truncation.of(data.truncate, settings)
        texts, field = data.texts_and_field()
        if data.output_dimension is not None:
            _check_output_dimension(engine, data.output_dimension)
        embedded = texts
        if data.max_tokens is not None:
            embedded = await _cut_to(engine, texts, data.max_tokens, truncation, field)
        dense, tokens = await _dense(
            request,
            engine,
            embedded,
            truncation,
            field=field,
            dimensions=data.output_dimension,
        )
        return EmbedByTypeResponse(
            id=str(uuid.uuid4()),
            embeddings=_by_type(dense, kinds),
            texts=texts,  # as sent, as Cohere echoes them
            meta=_meta("2", tokens),
        )
