"""What each client method sends and how the answers become one result, with no I/O:
a ``Plan`` is a route, one body per batch and the function that joins the decoded
answers. ``Client`` sends the bodies one after another, ``AsyncClient`` a few at once;
both finish the same way.

Batches are cut at the server's ``MAX_BATCH_SIZE`` (``/health``'s ``max_batch_size``),
or the client's ``batch_size`` where smaller: a larger request would be a 413. A rerank
or m3-score over more documents than that is scored in parts and joined, each result's
``index`` still its document's place in the whole list.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from bge_client._errors import ProtocolError
from bge_client._space import SpaceGuard
from bge_client._types import (
    DenseEmbeddings,
    HybridEmbeddings,
    HybridVector,
    M3Score,
    M3Scores,
    QuantizedEmbeddings,
    QuantizedFormat,
    QuantizedHybridEmbeddings,
    QuantizedHybridVector,
    Ranked,
    Ranking,
    SparseEmbeddings,
    SparseMapping,
    SparseSpace,
    SparseVector,
    Token,
    Usage,
    WireFormat,
)

__all__ = [
    "Plan",
    "Server",
    "dense",
    "hybrid",
    "hybrid_quantized",
    "m3_score",
    "quantized",
    "rerank",
    "sparse",
    "tokenize",
]

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Server:
    """What a client reads once from ``/health``."""

    max_batch_size: int
    embedding_model: str
    reranker_model: str


@dataclass(frozen=True, slots=True)
class Plan(Generic[A, R]):
    route: str
    bodies: list[dict[str, Any]]
    answer: type[A]
    finish: Callable[[list[A]], R]


# --- The answers, as the server writes them ----------------------------------------------


class _Sparse(msgspec.Struct):
    indices: list[int]
    values: list[float]
    mapping: SparseMapping
    index_space: int


class _SparseItem(msgspec.Struct):
    index: int
    sparse: _Sparse


class _SparseAnswer(msgspec.Struct):
    model: str
    data: list[_SparseItem]
    usage: Usage


class _HybridItem(msgspec.Struct):
    index: int
    dense: list[float] | str
    sparse: _Sparse
    colbert: list[list[float] | str] | None = None


class _HybridAnswer(msgspec.Struct):
    model: str
    data: list[_HybridItem]
    usage: Usage


class _QuantizedHybridItem(msgspec.Struct):
    index: int
    dense: list[int]
    sparse: _Sparse
    dense_scale: float | None = None
    colbert: list[list[int]] | None = None
    colbert_scales: list[float] | None = None


class _QuantizedHybridAnswer(msgspec.Struct):
    model: str
    data: list[_QuantizedHybridItem]
    usage: Usage


class _DenseItem(msgspec.Struct):
    index: int
    embedding: list[float] | str


class _DenseAnswer(msgspec.Struct):
    model: str
    data: list[_DenseItem]
    usage: Usage


class _QuantizedItem(msgspec.Struct):
    index: int
    embedding: list[int]
    scale: float | None = None


class _QuantizedAnswer(msgspec.Struct):
    model: str
    data: list[_QuantizedItem]
    usage: Usage


class _RerankItem(msgspec.Struct):
    index: int
    relevance_score: float


class _RerankAnswer(msgspec.Struct):
    model: str
    results: list[_RerankItem]
    usage: Usage


class _M3Item(msgspec.Struct):
    index: int
    dense: float
    sparse: float
    colbert: float
    sparse_dense: float | None = msgspec.field(name="sparse+dense")
    colbert_sparse_dense: float = msgspec.field(name="colbert+sparse+dense")


class _M3Answer(msgspec.Struct):
    model: str
    results: list[_M3Item]
    weights: tuple[float, float, float]
    usage: Usage


# --- The plans ------------------------------------------------------------------------------


def _texts(texts: Sequence[str], field: str) -> list[str]:
    # A bare string is a sequence of one-letter strings: refused, not embedded letter by letter.
    if isinstance(texts, str):
        raise TypeError(f"`{field}` is a list of strings; pass [{field[:-1]}] for one")
    return list(texts)


def _batches(items: list[str], size: int) -> list[list[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _body(**fields: Any) -> dict[str, Any]:
    # Options left at None are left out: the server's own defaults apply.
    return {name: value for name, value in fields.items() if value is not None}


def _in_order(route: str, sent: int, indices: list[int]) -> None:
    if sorted(indices) != list(range(sent)):
        raise ProtocolError(f"{route} answered items {indices} for {sent} inputs")


def _floats(row: list[float] | str, wire: WireFormat) -> list[float]:
    if not isinstance(row, str):
        return row
    raw = base64.b64decode(row)
    # Little-endian float32 (base64) or float16, as the server writes them.
    code, size = ("e", 2) if wire == "float16" else ("f", 4)
    return list(struct.unpack(f"<{len(raw) // size}{code}", raw))


def _usage(answers: Sequence[Any]) -> Usage:
    total = Usage()
    for answer in answers:
        total = total + answer.usage
    return total


def dense(
    texts: Sequence[str],
    server: Server,
    *,
    batch_size: int,
    wire: WireFormat,
    dimensions: int | None,
) -> Plan[_DenseAnswer, DenseEmbeddings]:
    route = "/v1/embeddings"
    batches = _batches(_texts(texts, "texts"), batch_size)

    def finish(answers: list[_DenseAnswer]) -> DenseEmbeddings:
        vectors: list[list[float]] = []
        for batch, answer in zip(batches, answers, strict=True):
            _in_order(route, len(batch), [item.index for item in answer.data])
            rows = sorted(answer.data, key=lambda item: item.index)
            vectors.extend(_floats(item.embedding, wire) for item in rows)
        model = answers[0].model if answers else server.embedding_model
        return DenseEmbeddings(model=model, vectors=vectors, usage=_usage(answers))

    bodies = [_body(input=b, encoding_format=wire, dimensions=dimensions) for b in batches]
    return Plan(route, bodies, _DenseAnswer, finish)


def quantized(
    texts: Sequence[str],
    server: Server,
    *,
    batch_size: int,
    form: QuantizedFormat,
    dimensions: int | None,
) -> Plan[_QuantizedAnswer, QuantizedEmbeddings]:
    route = "/v1/embeddings"
    batches = _batches(_texts(texts, "texts"), batch_size)
    scaled = form in ("int8", "uint8")

    def finish(answers: list[_QuantizedAnswer]) -> QuantizedEmbeddings:
        vectors: list[list[int]] = []
        scales: list[float] = []
        for batch, answer in zip(batches, answers, strict=True):
            _in_order(route, len(batch), [item.index for item in answer.data])
            for item in sorted(answer.data, key=lambda item: item.index):
                vectors.append(item.embedding)
                if scaled:
                    if item.scale is None:
                        raise ProtocolError(f"{route} answered {form} without a scale")
                    scales.append(item.scale)
        return QuantizedEmbeddings(
            model=answers[0].model if answers else server.embedding_model,
            format=form,
            vectors=vectors,
            scales=scales if scaled else None,
            usage=_usage(answers),
        )

    bodies = [_body(input=b, encoding_format=form, dimensions=dimensions) for b in batches]
    return Plan(route, bodies, _QuantizedAnswer, finish)


def _vector(item: _Sparse, guard: SpaceGuard, route: str) -> SparseVector:
    guard.answered(SparseSpace(item.mapping, item.index_space), route)
    return SparseVector(indices=item.indices, values=item.values)


def _space(guard: SpaceGuard, route: str) -> SparseSpace:
    # No answer (no texts) and nothing known yet: nothing was checked against any space.
    if guard.space is None:
        raise ProtocolError(f"{route}: the server reported no sparse space (does it serve sparse?)")
    return guard.space


def sparse(
    texts: Sequence[str], server: Server, guard: SpaceGuard, *, batch_size: int
) -> Plan[_SparseAnswer, SparseEmbeddings]:
    route = "/v1/sparse-embeddings"
    batches = _batches(_texts(texts, "texts"), batch_size)

    def finish(answers: list[_SparseAnswer]) -> SparseEmbeddings:
        vectors: list[SparseVector] = []
        for batch, answer in zip(batches, answers, strict=True):
            _in_order(route, len(batch), [item.index for item in answer.data])
            rows = sorted(answer.data, key=lambda item: item.index)
            vectors.extend(_vector(item.sparse, guard, route) for item in rows)
        return SparseEmbeddings(
            model=answers[0].model if answers else server.embedding_model,
            vectors=vectors,
            space=_space(guard, route),
            usage=_usage(answers),
        )

    bodies = [_body(input=b, mapping=guard.mapping()) for b in batches]
    return Plan(route, bodies, _SparseAnswer, finish)


def _pruning(colbert: bool, colbert_max_tokens: int | None) -> int | None:
    # The server's 422s, said before anything is sent.
    if colbert_max_tokens is None:
        return None
    if not colbert:
        raise ValueError("`colbert_max_tokens` prunes ColBERT rows: pass `colbert=True` with it")
    if colbert_max_tokens < 1:
        raise ValueError("`colbert_max_tokens` must be at least 1")
    return colbert_max_tokens


def _hybrid_bodies(
    batches: list[list[str]],
    guard: SpaceGuard,
    *,
    colbert: bool,
    colbert_max_tokens: int | None,
    encoding_format: str,
) -> list[dict[str, Any]]:
    pruning = _pruning(colbert, colbert_max_tokens)
    return [
        _body(
            input=b,
            mapping=guard.mapping(),
            return_colbert=colbert or None,
            colbert_max_tokens=pruning,
            encoding_format=encoding_format,
        )
        for b in batches
    ]


def hybrid(
    texts: Sequence[str],
    server: Server,
    guard: SpaceGuard,
    *,
    batch_size: int,
    colbert: bool,
    colbert_max_tokens: int | None,
    wire: WireFormat,
) -> Plan[_HybridAnswer, HybridEmbeddings]:
    route = "/v1/hybrid-embeddings"
    batches = _batches(_texts(texts, "texts"), batch_size)

    def one(item: _HybridItem) -> HybridVector:
        rows = None if item.colbert is None else [_floats(row, wire) for row in item.colbert]
        if colbert and rows is None:
            raise ProtocolError(f"{route} answered no ColBERT vectors, though asked for them")
        return HybridVector(
            dense=_floats(item.dense, wire),
            sparse=_vector(item.sparse, guard, route),
            colbert=rows,
        )

    def finish(answers: list[_HybridAnswer]) -> HybridEmbeddings:
        vectors: list[HybridVector] = []
        for batch, answer in zip(batches, answers, strict=True):
            _in_order(route, len(batch), [item.index for item in answer.data])
            vectors.extend(one(item) for item in sorted(answer.data, key=lambda i: i.index))
        return HybridEmbeddings(
            model=answers[0].model if answers else server.embedding_model,
            vectors=vectors,
            space=_space(guard, route),
            usage=_usage(answers),
        )

    bodies = _hybrid_bodies(
        batches, guard, colbert=colbert, colbert_max_tokens=colbert_max_tokens, encoding_format=wire
    )
    return Plan(route, bodies, _HybridAnswer, finish)


def hybrid_quantized(
    texts: Sequence[str],
    server: Server,
    guard: SpaceGuard,
    *,
    batch_size: int,
    form: QuantizedFormat,
    colbert: bool,
    colbert_max_tokens: int | None,
) -> Plan[_QuantizedHybridAnswer, QuantizedHybridEmbeddings]:
    route = "/v1/hybrid-embeddings"
    batches = _batches(_texts(texts, "texts"), batch_size)
    scaled = form in ("int8", "uint8")

    def one(item: _QuantizedHybridItem) -> QuantizedHybridVector:
        if colbert and item.colbert is None:
            raise ProtocolError(f"{route} answered no ColBERT vectors, though asked for them")
        if scaled and (
            item.dense_scale is None
            or (item.colbert is not None and len(item.colbert_scales or ()) != len(item.colbert))
        ):
            raise ProtocolError(f"{route} answered {form} without a scale for every vector")
        return QuantizedHybridVector(
            dense=item.dense,
            sparse=_vector(item.sparse, guard, route),
            dense_scale=item.dense_scale if scaled else None,
            colbert=item.colbert,
            colbert_scales=item.colbert_scales if scaled else None,
        )

    def finish(answers: list[_QuantizedHybridAnswer]) -> QuantizedHybridEmbeddings:
        vectors: list[QuantizedHybridVector] = []
        for batch, answer in zip(batches, answers, strict=True):
            _in_order(route, len(batch), [item.index for item in answer.data])
            vectors.extend(one(item) for item in sorted(answer.data, key=lambda i: i.index))
        return QuantizedHybridEmbeddings(
            model=answers[0].model if answers else server.embedding_model,
            format=form,
            vectors=vectors,
            space=_space(guard, route),
            usage=_usage(answers),
        )

    bodies = _hybrid_bodies(
        batches, guard, colbert=colbert, colbert_max_tokens=colbert_max_tokens, encoding_format=form
    )
    return Plan(route, bodies, _QuantizedHybridAnswer, finish)


def _documents(query: str, documents: Sequence[str]) -> list[str]:
    if not isinstance(query, str):
        raise TypeError("`query` is one string")
    return _texts(documents, "documents")


def rerank(
    query: str,
    documents: Sequence[str],
    server: Server,
    *,
    batch_size: int,
    top_n: int | None,
    raw_scores: bool,
) -> Plan[_RerankAnswer, Ranking]:
    route = "/v1/rerank"
    texts = _documents(query, documents)
    if top_n is not None and top_n < 1:
        raise ValueError("`top_n` must be at least 1")
    batches = _batches(texts, batch_size)

    def finish(answers: list[_RerankAnswer]) -> Ranking:
        ranked: list[Ranked] = []
        offset = 0
        for batch, answer in zip(batches, answers, strict=True):
            _in_order(route, len(batch), [item.index for item in answer.results])
            ranked.extend(
                Ranked(index=offset + r.index, score=r.relevance_score, document=batch[r.index])
                for r in answer.results
            )
            offset += len(batch)
        # Best first; equal scores keep the documents' order, as the server's sort does.
        ranked.sort(key=lambda r: (-r.score, r.index))
        return Ranking(
            model=answers[0].model if answers else server.reranker_model,
            results=ranked[:top_n] if top_n is not None else ranked,
            usage=_usage(answers),
        )

    # Every part answers all its documents: the best N of the whole may sit in any part.
    bodies = [
        _body(query=query, documents=b, top_n=len(b), raw_scores=raw_scores or None)
        for b in batches
    ]
    return Plan(route, bodies, _RerankAnswer, finish)


def m3_score(
    query: str,
    documents: Sequence[str],
    server: Server,
    *,
    batch_size: int,
    weights: tuple[float, float, float] | None,
) -> Plan[_M3Answer, M3Scores]:
    route = "/v1/m3-score"
    texts = _documents(query, documents)
    batches = _batches(texts, batch_size)

    def finish(answers: list[_M3Answer]) -> M3Scores:
        results: list[M3Score] = []
        offset = 0
        for batch, answer in zip(batches, answers, strict=True):
            _in_order(route, len(batch), [item.index for item in answer.results])
            for item in sorted(answer.results, key=lambda i: i.index):
                results.append(
                    M3Score(
                        index=offset + item.index,
                        dense=item.dense,
                        sparse=item.sparse,
                        colbert=item.colbert,
                        sparse_dense=item.sparse_dense,
                        colbert_sparse_dense=item.colbert_sparse_dense,
                    )
                )
            offset += len(batch)
        return M3Scores(
            model=answers[0].model if answers else server.embedding_model,
            results=results,
            weights=answers[0].weights if answers else weights or (0.4, 0.2, 0.4),
            usage=_usage(answers),
        )

    listed = list(weights) if weights is not None else None
    bodies = [_body(query=query, documents=b, weights=listed) for b in batches]
    return Plan(route, bodies, _M3Answer, finish)


def tokenize(
    texts: Sequence[str], *, batch_size: int, add_special_tokens: bool
) -> Plan[list[list[Token]], list[list[Token]]]:
    route = "/tokenize"
    batches = _batches(_texts(texts, "texts"), batch_size)

    def finish(answers: list[list[list[Token]]]) -> list[list[Token]]:
        rows = [row for answer in answers for row in answer]
        if len(rows) != sum(len(b) for b in batches):
            raise ProtocolError(f"{route} answered {len(rows)} rows for {len(texts)} texts")
        return rows

    bodies = [_body(inputs=b, add_special_tokens=add_special_tokens) for b in batches]
    return Plan(route, bodies, list[list[Token]], finish)
