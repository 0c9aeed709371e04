"""Another instance of this service (``REMOTE_KIND=self``): a GPU box serving CPU front ends.

It is the only remote that computes bge-m3 sparse and ColBERT vectors. Sparse
vectors are asked for with ``"mapping": "tokenizer"``, so indices come back as
the token ids themselves and the front end maps them with its own settings, as
it would a local backend's. Dense and ColBERT vectors travel as base64 float32:
exact, and a quarter the size of JSON numbers. Tokens and texts come from its
TEI routes (``/tokenize``, ``/decode``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

import msgspec
import numpy as np

from backends.remote.answers import (
    Listed,
    base64_row,
    cohere_scores,
    compute_tokens,
    decoded,
    dense_matrix,
    expect_ok,
    expect_rows,
    failure,
    in_order,
)
from backends.remote.contract import Kind, Offer, ProbeFailed
from backends.remote.tei import TeiRoutes
from backends.remote.transport import Answer, Deadline, RemoteClient
from engine.errors import InvalidInput
from engine.settings import Settings
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

__all__ = ["PeerRemote"]

# A peer from before the rename reports its lexical and ColBERT chain as "sparse".
_OLD_OPERATION_NAMES = {"sparse": Operation.LEXICAL_COLBERT.value}
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


class _Sparse(msgspec.Struct):
    indices: list[int]
    values: list[float]
    index_space: int


class _SparseRow(msgspec.Struct):
    index: int
    sparse: _Sparse


class _HybridRow(msgspec.Struct):
    index: int
    dense: str  # base64, little-endian float32, as are the ColBERT rows
    sparse: _Sparse
    colbert: list[str] | None = None


_Embeddings = Listed[_Embedding]
_SparseEmbeddings = Listed[_SparseRow]
_HybridEmbeddings = Listed[_HybridRow]


class PeerRemote(TeiRoutes):
    kind: ClassVar[Kind] = "self"  # RunpodRemote speaks it as "runpod"
    name = "bge-serve"
    halves_too_large = True

    @classmethod
    async def probe(cls, client: RemoteClient, settings: Settings, deadline: Deadline) -> Self:
        answer = await client.get("/health", deadline)
        if answer.status not in (200, 503):  # 503: loading or degraded, said in the body
            expect_ok(answer)
        health = decoded(answer, _Health)
        if health.status == "loading":
            raise ProbeFailed("it is still loading its models")
        if health.error:
            raise ProbeFailed(f"it failed to start: {health.error}")
        remote = cls(client)
        operations = frozenset(Operation(_OLD_OPERATION_NAMES.get(op, op)) for op in health.chains)
        models: dict[Operation, ModelInfo] = {}
        # The peer does not publish its token limit (0: unknown).
        if Operation.EMBED in operations:
            dense, _ = await remote._dense(_PROBE_TEXT, deadline)
            models[Operation.EMBED] = ModelInfo(
                health.embedding_model, 0, 0, dimension=int(dense.shape[1])
            )
        if Operation.LEXICAL_COLBERT in operations:
            (row,), _, hybrid = await remote._hybrid(_PROBE_TEXT, False, deadline)
            models[Operation.LEXICAL_COLBERT] = ModelInfo(
                health.embedding_model,
                0,
                row.sparse.index_space,
                dimension=len(base64_row(hybrid, row.dense)),
            )
        if Operation.RERANK in operations:
            models[Operation.RERANK] = ModelInfo(health.reranker_model, 0, 0)
        not_served = "its own *_BACKENDS leaves this operation unserved"
        offer = Offer.of(
            models,
            outputs=frozenset(Output)
            if Operation.LEXICAL_COLBERT in operations
            else frozenset({Output.DENSE}),
            max_batch_size=health.max_batch_size,
            missing={op: not_served for op in Operation if op not in operations},
        )
        return remote._serving(offer)

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
        deadline: Deadline,
    ) -> Encoding:
        if options != DEFAULT_OPTIONS:
            return await self._tei_encode(texts, outputs, options, deadline)
        if outputs == {Output.DENSE} and Operation.EMBED in self.offer.capabilities.operations:
            dense, tokens = await self._dense(texts, deadline)
            return Encoding(token_count=tokens, dense=dense)
        if outputs == {Output.LEXICAL}:
            body: dict[str, object] = {"input": list(texts), "mapping": "tokenizer"}
            answer = await self.client.post("/v1/sparse-embeddings", body, deadline)
            sparse = decoded(answer, _SparseEmbeddings)
            rows = in_order(answer, sparse.data, len(texts))
            return Encoding(
                token_count=sparse.usage.prompt_tokens,
                lexical=tuple(_weights(row.sparse) for row in rows),
            )
        hybrid_rows, tokens, answer = await self._hybrid(texts, Output.COLBERT in outputs, deadline)
        colbert = None
        if Output.COLBERT in outputs:
            colbert = tuple(_colbert(answer, row.colbert) for row in hybrid_rows)
        vectors = None
        if Output.DENSE in outputs:
            dense_rows = [base64_row(answer, row.dense) for row in hybrid_rows]
            vectors = dense_matrix(answer, dense_rows, len(texts))
        lexical = None
        if Output.LEXICAL in outputs:
            lexical = tuple(_weights(row.sparse) for row in hybrid_rows)
        return Encoding(token_count=tokens, dense=vectors, lexical=lexical, colbert=colbert)

    async def score(self, query: str, documents: Sequence[str], deadline: Deadline) -> Scores:
        body = {"query": query, "documents": list(documents), "raw_scores": True}
        answer = await self.client.post("/v1/rerank", body, deadline)
        return cohere_scores(answer, len(documents))

    async def _tei_encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
        deadline: Deadline,
    ) -> Encoding:
        """Options passed on through the peer's TEI routes, which take them: dense
        (/embed) and ColBERT (/embed_all) vectors. Its /embed_sparse answers in the peer's
        own SPARSE_TOKEN_MAPPING, not token ids, so sparse vectors are refused."""
        body: dict[str, object] = {"inputs": list(texts)}
        if options.truncate_left:  # only sent when this side truncates
            body.update(truncate=True, truncation_direction="Left")
        if outputs == {Output.DENSE}:
            body["normalize"] = options.normalize
            answer = await self.client.post("/embed", body, deadline)
            rows = decoded(answer, list[list[float]])
            dense = dense_matrix(answer, rows, len(texts), normalize=options.normalize)
            return Encoding(token_count=compute_tokens(answer), dense=dense)
        if outputs == {Output.COLBERT} and options.normalize:
            answer = await self.client.post("/embed_all", body, deadline)
            matrices = decoded(answer, list[list[list[float]]])
            expect_rows(answer, len(matrices), len(texts))
            colbert = tuple(dense_matrix(answer, m, len(m)) for m in matrices)
            return Encoding(token_count=compute_tokens(answer), colbert=colbert)
        raise InvalidInput(
            f"`truncation_direction`: Left is passed on to the bge-serve at {self.url} for "
            "dense or ColBERT vectors alone, not for " + ", ".join(sorted(outputs)),
            param="truncation_direction",
        )

    async def _hybrid(
        self, texts: Sequence[str], colbert: bool, deadline: Deadline
    ) -> tuple[list[_HybridRow], int, Answer]:
        """Rows in input order, the tokens counted, and the answer they came in."""
        body = {
            "input": list(texts),
            "mapping": "tokenizer",
            "return_colbert": colbert,
            "encoding_format": "base64",
        }
        answer = await self.client.post(_HYBRID, body, deadline)
        hybrid = decoded(answer, _HybridEmbeddings)
        return in_order(answer, hybrid.data, len(texts)), hybrid.usage.prompt_tokens, answer

    async def _dense(self, texts: Sequence[str], deadline: Deadline) -> tuple[DenseMatrix, int]:
        body = {"input": list(texts), "encoding_format": "base64"}
        answer = await self.client.post("/v1/embeddings", body, deadline)
        embeddings = decoded(answer, _Embeddings)
        rows = in_order(answer, embeddings.data, len(texts))
        vectors = [base64_row(answer, r.embedding) for r in rows]
        return dense_matrix(answer, vectors, len(texts)), embeddings.usage.prompt_tokens


def _weights(sparse: _Sparse) -> TokenWeights:
    # With the tokenizer mapping the indices are the token ids, unique and ascending.
    return TokenWeights(
        token_ids=np.asarray(sparse.indices, dtype=np.int64),
        weights=np.asarray(sparse.values, dtype=np.float32),
    )


def _colbert(answer: Answer, rows: list[str] | None) -> ColbertMatrix:
    if not rows:
        raise failure(answer, "without ColBERT vectors")
    return dense_matrix(answer, [base64_row(answer, row) for row in rows], len(rows))
