"""The service's own routes: bge-m3 sparse vectors and hybrid (one-pass) embeddings.

Sparse vectors come ready for Qdrant's ``SparseVector(indices, values)``, in
SPARSE_TOKEN_MAPPING's space unless the request names a ``mapping``; each says which
space it is in (``mapping``, ``index_space``), so a client can check before it stores.

Hybrid answers write ``dense`` and each ColBERT row as ``encoding_format`` says
(api/vectors.py), every format for both: each ColBERT row is a vector of its own, quantized
as a dense vector is (int8 and uint8 with a scale per row). int8/uint8 carry dense's
``dense_scale`` and the ColBERT rows' ``colbert_scales``, one per row.

``colbert_max_tokens`` (ours) prunes each text's ColBERT rows to the k of largest norm
before the rows are L2-normalised, in their order; the backend computes it (the norms do
not survive normalising), so a chain without a backend that can is a 422 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, post

from api.disconnect import unless_disconnected
from api.docs import VECTOR, answers, sends
from api.errors import ERROR_RESPONSES
from api.fields import Text, Texts
from api.usage import Usage
from api.vectors import VectorFormat, VectorRow, vector_rows, vector_scales
from engine.errors import InvalidInput
from engine.inference import InferenceEngine
from engine.settings import Settings
from engine.sparse_mapping import SparseMapping
from engine.types import Operation, Output, SparseVector

__all__ = ["NativeController"]


class SparseRequest(msgspec.Struct, kw_only=True):
    input: Text | Texts
    model: str | None = None
    # Overrides SPARSE_TOKEN_MAPPING for this request; "tokenizer" returns the token ids
    # themselves (what a front end that maps them its own way asks for), "hash" the
    # bge_inference_service space.
    mapping: Literal["tokenizer", "hash"] | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class HybridRequest(SparseRequest, kw_only=True):
    return_colbert: bool = False
    # As OpenAI's: "base64" writes dense and each ColBERT row as little-endian float32,
    # a quarter the bytes, which keeps ColBERT answers under proxies' and RunPod's limits;
    # "float16" halves that again; the quantized formats apply to ColBERT rows too, row by row.
    encoding_format: VectorFormat = "float"
    # Ours: each text's ColBERT rows pruned to the k of largest norm before normalising,
    # kept in their order (a shorter text keeps every row): a smaller store for a small
    # loss (docs/benchmarks.md). Only with return_colbert.
    colbert_max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None

    def pruning(self) -> int | None:
        """The ColBERT rows to keep per text; a bound without ColBERT rows to bound is a
        mistake worth saying, not ignoring."""
        if self.colbert_max_tokens is not None and not self.return_colbert:
            raise InvalidInput(
                "`colbert_max_tokens` prunes ColBERT rows: send it with `return_colbert: true`",
                param="colbert_max_tokens",
            )
        return self.colbert_max_tokens


class Sparse(msgspec.Struct, kw_only=True):
    indices: list[int]
    values: list[float]
    mapping: SparseMapping
    index_space: int


class SparseEmbedding(msgspec.Struct, kw_only=True):
    index: int
    sparse: Sparse


class SparseResponse(msgspec.Struct, kw_only=True):
    model: str
    data: list[SparseEmbedding]
    usage: Usage


class HybridEmbedding(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    dense: VectorRow
    # int8 and uint8 only: dense is about `dense * dense_scale` (uint8: `- 128` first).
    dense_scale: float | None = None
    sparse: Sparse
    colbert: list[VectorRow] | None = None
    # int8 and uint8 with `return_colbert` only: one scale per ColBERT row, as dense_scale.
    colbert_scales: list[float] | None = None


class HybridResponse(msgspec.Struct, kw_only=True):
    model: str
    data: list[HybridEmbedding]
    usage: Usage


_SPARSE = {
    "indices": [6, 4865, 75842, 186],
    "values": [0.0412, 0.2265, 0.1859, 0.0301],
    "mapping": "tokenizer",
    "index_space": 250002,
}
_SPARSE_ASKED = sends({"input": ["What is BGE M3?"]})
_SPARSE_ANSWER = {
    "model": "BAAI/bge-m3",
    "data": [{"index": 0, "sparse": _SPARSE}],
    "usage": {"prompt_tokens": 9, "total_tokens": 9},
}
_HYBRID_ASKED = sends({"input": ["What is BGE M3?"], "return_colbert": True})
_HYBRID_ANSWER = {
    "model": "BAAI/bge-m3",
    "data": [{"index": 0, "dense": VECTOR, "sparse": _SPARSE, "colbert": [VECTOR, VECTOR]}],
    "usage": {"prompt_tokens": 9, "total_tokens": 9},
}


class NativeController(Controller):
    path = "/v1"
    tags = ("bge-m3",)

    @post(
        "/sparse-embeddings",
        status_code=200,
        responses=answers(SparseResponse, _SPARSE_ANSWER, ERROR_RESPONSES),
        raises=[],
        summary="bge-m3 sparse (lexical) vectors, in SPARSE_TOKEN_MAPPING's space or the "
        "request's `mapping`",
    )
    async def sparse_embeddings(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[SparseRequest, _SPARSE_ASKED],
        engine: InferenceEngine,
        settings: Settings,
    ) -> SparseResponse:
        model = engine.served_model(Operation.LEXICAL_COLBERT, data.model)
        vectors, tokens = await unless_disconnected(
            request, engine.embed_sparse(data.texts(), mapping=data.mapping)
        )
        mapping = data.mapping or settings.sparse_token_mapping
        space = engine.sparse_index_space(mapping)
        return SparseResponse(
            model=model,
            data=[
                SparseEmbedding(index=i, sparse=_sparse(v, mapping, space))
                for i, v in enumerate(vectors)
            ],
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    @post(
        "/hybrid-embeddings",
        status_code=200,
        responses=answers(HybridResponse, _HYBRID_ANSWER, ERROR_RESPONSES),
        raises=[],
        summary="bge-m3 dense + sparse (+ ColBERT) vectors from one forward pass",
    )
    async def hybrid_embeddings(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[HybridRequest, _HYBRID_ASKED],
        engine: InferenceEngine,
        settings: Settings,
    ) -> HybridResponse:
        model = engine.served_model(Operation.LEXICAL_COLBERT, data.model)
        outputs = {Output.DENSE, Output.LEXICAL}
        if data.return_colbert:
            outputs.add(Output.COLBERT)
        result = await unless_disconnected(
            request,
            engine.embed_hybrid(
                data.texts(),
                frozenset(outputs),
                mapping=data.mapping,
                colbert_max_tokens=data.pruning(),
            ),
        )
        assert result.dense is not None and result.sparse is not None
        mapping = data.mapping or settings.sparse_token_mapping
        space = engine.sparse_index_space(mapping)
        encoding = data.encoding_format
        dense_rows = vector_rows(result.dense, encoding)
        scales = vector_scales(result.dense, encoding)
        colbert = result.colbert
        return HybridResponse(
            model=model,
            data=[
                HybridEmbedding(
                    index=i,
                    dense=dense,
                    dense_scale=None if scales is None else scales[i],
                    sparse=_sparse(sparse, mapping, space),
                    colbert=vector_rows(colbert[i], encoding) if colbert is not None else None,
                    colbert_scales=(
                        vector_scales(colbert[i], encoding) if colbert is not None else None
                    ),
                )
                for i, (dense, sparse) in enumerate(zip(dense_rows, result.sparse, strict=True))
            ],
            usage=Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        )


def _sparse(vector: SparseVector, mapping: SparseMapping, index_space: int) -> Sparse:
    return Sparse(
        indices=vector.indices.tolist(),
        values=vector.values.tolist(),
        mapping=mapping,
        index_space=index_space,
    )
