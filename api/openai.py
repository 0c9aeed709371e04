"""OpenAI dialect: ``POST /v1/embeddings`` and ``GET /v1/models``.

Works with the official ``openai`` SDK, which asks for base64 by default and
decodes it as little-endian float32, and with LangChain's ``OpenAIEmbeddings`` at its
defaults, which sends token-id arrays (decoded to text: api/token_arrays.py).

``encoding_format`` takes OpenAI's ``float`` and ``base64`` and, as this service's
extension, ``float16`` (base64 of little-endian half floats), ``int8``, ``uint8``,
``binary`` and ``ubinary`` (JSON integers, api/quantization.py); int8 and uint8 carry
each vector's ``scale`` beside it.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, post

from api.disconnect import unless_disconnected
from api.docs import VECTOR, answers, sends
from api.errors import ERROR_RESPONSES
from api.fields import Text
from api.token_arrays import TokenArrays
from api.usage import Usage
from api.vectors import VectorFormat, VectorRow, vector_rows, vector_scales
from engine.errors import InvalidInput
from engine.inference import InferenceEngine
from engine.settings import Settings
from engine.types import Operation

__all__ = ["EmbeddingRequest", "EmbeddingResponse", "OpenAIController", "create_embeddings"]


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    # Token-id arrays are part of OpenAI's schema (LangChain sends them by default): the
    # OpenAI route decodes them (api/token_arrays.py); Infinity's, whose schema has none,
    # refuses them with an error that says what to send instead.
    input: Text | Annotated[list[Text | int | list[int]], msgspec.Meta(min_length=1)]
    model: str | None = None
    encoding_format: VectorFormat = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    user: str | None = None

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        texts: list[str] = []
        for position, item in enumerate(self.input):
            if not isinstance(item, str):
                raise InvalidInput(
                    f"`input[{position}]` is a token array; send text: this model's tokenizer is "
                    "not OpenAI's (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))",
                    param=f"input[{position}]",
                )
            texts.append(item)
        return texts


class Embedding(msgspec.Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    # Numbers for `float`, integers for the quantized formats, base64 otherwise.
    embedding: VectorRow
    # Ours, int8 and uint8 only (absent otherwise, so OpenAI's answers stay as they are):
    # the vector is about `embedding * scale` (uint8: `(embedding - 128) * scale`).
    scale: float | msgspec.UnsetType = msgspec.UNSET


class EmbeddingResponse(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "BAAI"


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


async def create_embeddings(
    request: Request[Any, Any, Any],
    data: EmbeddingRequest,
    engine: InferenceEngine,
    *,
    dimensions: int | None,
    model: str | None,
    token_arrays: TokenArrays | None = None,
) -> EmbeddingResponse:
    """The OpenAI answer to ``data``; Infinity's ``/embeddings`` answers the same.

    ``token_arrays``: how token-id arrays in ``input`` are decoded (None: refused).
    """
    served = engine.served_model(Operation.EMBED, model)
    texts = data.texts() if token_arrays is None else await token_arrays.texts(data.input)
    dense, tokens = await unless_disconnected(
        request, engine.embed_dense(texts, dimensions=dimensions)
    )
    rows = vector_rows(dense, data.encoding_format)
    scales = vector_scales(dense, data.encoding_format)
    return EmbeddingResponse(
        data=[
            Embedding(index=i, embedding=row, scale=msgspec.UNSET if scales is None else scales[i])
            for i, row in enumerate(rows)
        ],
        model=served,
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )


_EMBEDDINGS_ASKED = sends(
    {"model": "BAAI/bge-m3", "input": ["What is BGE M3?", "Paris is in France."]}
)
_EMBEDDINGS_ANSWER = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": VECTOR}],
    "model": "BAAI/bge-m3",
    "usage": {"prompt_tokens": 9, "total_tokens": 9},
}
_MODELS_ANSWER = {
    "object": "list",
    "data": [
        {"id": "BAAI/bge-m3", "object": "model", "created": 1767225600, "owned_by": "BAAI"},
        {
            "id": "BAAI/bge-reranker-v2-m3",
            "object": "model",
            "created": 1767225600,
            "owned_by": "BAAI",
        },
    ],
}


class OpenAIController(Controller):
    path = "/v1"
    tags = ("OpenAI",)

    @post(
        "/embeddings",
        status_code=200,
        responses=answers(EmbeddingResponse, _EMBEDDINGS_ANSWER, ERROR_RESPONSES),
        raises=[],
        summary="Dense embeddings (OpenAI-compatible)",
    )
    async def embeddings(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[EmbeddingRequest, _EMBEDDINGS_ASKED],
        engine: InferenceEngine,
        settings: Settings,
    ) -> EmbeddingResponse:
        return await create_embeddings(
            request,
            data,
            engine,
            dimensions=data.dimensions,
            model=data.model,
            token_arrays=TokenArrays.of(settings),
        )

    @get(
        "/models",
        summary="Models this service serves (OpenAI-compatible)",
        responses=answers(ModelList, _MODELS_ANSWER, {}),
    )
    async def models(self, engine: InferenceEngine) -> ModelList:
        created = int(time.time())
        names = dict.fromkeys(engine.model_name(op) for op in sorted(engine.operations))
        return ModelList(data=[Model(id=name, created=created) for name in names])
