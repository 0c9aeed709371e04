"""Another instance of this service (``REMOTE_KIND=self``): a GPU box serving CPU front ends.

It is the only remote that computes bge-m3 sparse and ColBERT vectors. Sparse
vectors are asked for with ``"mapping": "tokenizer"``, so indices come back as
the token ids themselves and the front end maps them with its own settings, as
it would a local backend's. Dense and ColBERT vectors travel as base64 float32:
exact, and a quarter the size of JSON numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import msgspec
import numpy as np

from backends.remote.dialect import (
    Kind,
    Offer,
    ProbeFailed,
    TeiTokenRoutes,
    Usage,
    base64_row,
    cohere_scores,
    decode,
    dense_matrix,
    expect_ok,
    expect_rows,
    permutation,
    tei_tokens,
)
from backends.remote.transport import Answer, Deadline, RemoteClient
from engine.errors import BackendFailure, InvalidInput
from engine.types import (
    DEFAULT_OPTIONS,
    ColbertMatrix,
    DenseMatrix,
    EncodeOptions,
    Encoding,
    ModelInfo,
    Operation,
    Output,
    Scores,
    TokenWeights,
)

__all__ = ["PeerDialect"]

_PROBE_TEXT = ["dimension probe"]
_DEFAULT_MAX_BATCH = 2048
_HYBRID = "/v1/hybrid-embeddings"


class _Health(msgspec.Struct):
    status: str
    chains: dict[str, list[str]]
    embedding_model: str
    reranker_model: str
    max_batch_size: int = _DEFAULT_MAX_BATCH
    error: str | None = None


class _Embedding(msgspec.Struct):
    index: int
    embedding: str  # base64, little-endian float32


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]
    usage: Usage


class _Sparse(msgspec.Struct):
    indices: list[int]
    values: list[float]
    index_space: int


class _SparseRow(msgspec.Struct):
    index: int
    sparse: _Sparse


class _SparseEmbeddings(msgspec.Struct):
    data: list[_SparseRow]
    usage: Usage


class _HybridRow(msgspec.Struct):
    index: int
    dense: str  # base64, little-endian float32, as are the ColBERT rows
    sparse: _Sparse
    colbert: list[str] | None = None


class _HybridEmbeddings(msgspec.Struct):
    data: list[_HybridRow]
    usage: Usage


class PeerDialect(TeiTokenRoutes):
    kind: Kind = "self"
    halves_too_large: bool = True

    async def probe(self, client: RemoteClient, deadline: Deadline) -> Offer:
        answer = await client.get("/health", deadline)
        if answer.status not in (200, 503):  # 503: loading or degraded, said in the body
            expect_ok(answer, "/health")
        health = decode(answer, _Health, client, "/health")
        if health.status == "loading":
            raise ProbeFailed("it is still loading its models")
        if health.error:
            raise ProbeFailed(f"it failed to start: {health.error}")
        operations = frozenset(Operation(op) for op in health.chains)
        models: dict[Operation, ModelInfo] = {}
        # The peer does not publish its token limit (0: unknown) and has no tokenizer route.
        if Operation.EMBED in operations:
            dense, _ = await self._dense(client, _PROBE_TEXT, deadline)
            models[Operation.EMBED] = ModelInfo(
                health.embedding_model, 0, 0, dimension=int(dense.shape[1])
            )
        if Operation.SPARSE in operations:
            (row,), _ = await self._hybrid(client, _PROBE_TEXT, False, deadline)
            dimension = len(base64_row(row.dense, client, _HYBRID))
            models[Operation.SPARSE] = ModelInfo(
                health.embedding_model, 0, row.sparse.index_space, dimension=dimension
            )
        if Operation.RERANK in operations:
            models[Operation.RERANK] = ModelInfo(health.reranker_model, 0, 0)
        not_served = "its own *_BACKENDS leaves this operation unserved"
        return Offer(
            kind=self.kind,
            operations=operations,
            outputs=frozenset(Output)
            if Operation.SPARSE in operations
            else frozenset({Output.DENSE}),
            models=models,
            max_batch_size=health.max_batch_size,
            missing={op: not_served for op in Operation if op not in operations},
        )

    async def encode(
        self,
        client: RemoteClient,
        texts: Sequence[str],
        outputs: frozenset[Output],
        offer: Offer,
        deadline: Deadline,
        options: EncodeOptions = DEFAULT_OPTIONS,
    ) -> Encoding:
        if options != DEFAULT_OPTIONS:
            return await self._tei_encode(client, texts, outputs, deadline, options)
        if outputs == {Output.DENSE} and Operation.EMBED in offer.operations:
            dense, tokens = await self._dense(client, texts, deadline)
            return Encoding(token_count=tokens, dense=dense)
        if outputs == {Output.SPARSE}:
            path = "/v1/sparse-embeddings"
            body: dict[str, object] = {"input": list(texts), "mapping": "tokenizer"}
            sparse = decode(
                await client.post(path, body, deadline), _SparseEmbeddings, client, path
            )
            rows = _in_order(sparse.data, len(texts), client, path)
            return Encoding(
                token_count=sparse.usage.prompt_tokens,
                lexical=tuple(_weights(row.sparse) for row in rows),
            )
        hybrid_rows, tokens = await self._hybrid(client, texts, Output.COLBERT in outputs, deadline)
        colbert = None
        if Output.COLBERT in outputs:
            colbert = tuple(_colbert(row.colbert, client) for row in hybrid_rows)
        return Encoding(
            token_count=tokens,
            dense=dense_matrix(
                [base64_row(row.dense, client, _HYBRID) for row in hybrid_rows],
                len(texts),
                client,
                _HYBRID,
            )
            if Output.DENSE in outputs
            else None,
            lexical=tuple(_weights(row.sparse) for row in hybrid_rows)
            if Output.SPARSE in outputs
            else None,
            colbert=colbert,
        )

    async def score(
        self,
        client: RemoteClient,
        query: str,
        documents: Sequence[str],
        offer: Offer,
        deadline: Deadline,
    ) -> Scores:
        path = "/v1/rerank"
        body = {"query": query, "documents": list(documents), "raw_scores": True}
        return cohere_scores(await client.post(path, body, deadline), len(documents), client, path)

    async def tokenize(
        self, client: RemoteClient, texts: Sequence[str], offer: Offer, deadline: Deadline
    ) -> tuple[list[int], ...]:
        rows = await tei_tokens(client, texts, True, deadline)
        return tuple([token.id for token in row] for row in rows)

    async def _tei_encode(
        self,
        client: RemoteClient,
        texts: Sequence[str],
        outputs: frozenset[Output],
        deadline: Deadline,
        options: EncodeOptions,
    ) -> Encoding:
        """Options passed on through the peer's TEI routes, which take them: dense
        (/embed) and ColBERT (/embed_all) vectors. Its /embed_sparse answers in the peer's
        own SPARSE_TOKEN_MAPPING, not token ids, so sparse vectors are refused."""
        body: dict[str, object] = {"inputs": list(texts)}
        if options.truncate_left:  # only sent when this side truncates
            body.update(truncate=True, truncation_direction="Left")
        if outputs == {Output.DENSE}:
            body["normalize"] = options.normalize
            answer = await client.post("/embed", body, deadline)
            rows = decode(answer, list[list[float]], client, "/embed")
            dense = dense_matrix(rows, len(texts), client, "/embed", normalize=options.normalize)
            return Encoding(token_count=_compute_tokens(answer, client, "/embed"), dense=dense)
        if outputs == {Output.COLBERT} and options.normalize:
            answer = await client.post("/embed_all", body, deadline)
            matrices = decode(answer, list[list[list[float]]], client, "/embed_all")
            expect_rows(len(matrices), len(texts), client, "/embed_all")
            colbert = tuple(dense_matrix(m, len(m), client, "/embed_all") for m in matrices)
            tokens = _compute_tokens(answer, client, "/embed_all")
            return Encoding(token_count=tokens, colbert=colbert)
        raise InvalidInput(
            f"`truncation_direction`: Left is passed on to the bge-serve at {client.url} for "
            "dense or ColBERT vectors alone, not for " + ", ".join(sorted(outputs)),
            param="truncation_direction",
        )

    async def _hybrid(
        self, client: RemoteClient, texts: Sequence[str], colbert: bool, deadline: Deadline
    ) -> tuple[list[_HybridRow], int]:
        """Rows in input order, and the tokens counted."""
        body = {
            "input": list(texts),
            "mapping": "tokenizer",
            "return_colbert": colbert,
            "encoding_format": "base64",
        }
        answer = await client.post(_HYBRID, body, deadline)
        hybrid = decode(answer, _HybridEmbeddings, client, _HYBRID)
        return _in_order(hybrid.data, len(texts), client, _HYBRID), hybrid.usage.prompt_tokens

    async def _dense(
        self, client: RemoteClient, texts: Sequence[str], deadline: Deadline
    ) -> tuple[DenseMatrix, int]:
        path = "/v1/embeddings"
        body = {"input": list(texts), "encoding_format": "base64"}
        embeddings = decode(await client.post(path, body, deadline), _Embeddings, client, path)
        rows = _in_order(embeddings.data, len(texts), client, path)
        vectors = [base64_row(r.embedding, client, path) for r in rows]
        return dense_matrix(vectors, len(texts), client, path), embeddings.usage.prompt_tokens


class _Indexed(Protocol):
    @property
    def index(self) -> int: ...


Row = TypeVar("Row", bound=_Indexed)


def _in_order(rows: list[Row], sent: int, client: RemoteClient, path: str) -> list[Row]:
    permutation([row.index for row in rows], sent, client, path)
    return sorted(rows, key=lambda row: row.index)


def _compute_tokens(answer: Answer, client: RemoteClient, path: str) -> int:
    """The tokens a bge-serve counted, from the header its TEI routes send."""
    header = answer.headers.get("x-compute-tokens", "")
    if not header.isdigit():
        raise BackendFailure(f"the remote {client.url} answered {path} without x-compute-tokens")
    return int(header)


def _weights(sparse: _Sparse) -> TokenWeights:
    # With the tokenizer mapping the indices are the token ids, unique and ascending.
    return TokenWeights(
        token_ids=np.asarray(sparse.indices, dtype=np.int64),
        weights=np.asarray(sparse.values, dtype=np.float32),
    )


def _colbert(rows: list[str] | None, client: RemoteClient) -> ColbertMatrix:
    if not rows:
        raise BackendFailure(f"the remote {client.url} answered {_HYBRID} without ColBERT vectors")
    vectors = [base64_row(row, client, _HYBRID) for row in rows]
    return dense_matrix(vectors, len(rows), client, _HYBRID)
