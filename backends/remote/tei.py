"""Text Embeddings Inference (TEI 1.9): one model per container.

An embedding container serves dense vectors (``POST /embed``), a SPLADE one
sparse vectors (``POST /embed_sparse``; any other model answers 424 there), a
reranker container rerank logits (``POST /rerank``). ``GET /info`` says which,
and the batch limit (``max_client_batch_size``). Token usage comes from TEI's
``x-compute-tokens`` header, or from ``POST /tokenize`` where a proxy strips it.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from backends.remote.dialect import (
    Kind,
    Offer,
    TeiTokenRoutes,
    decode,
    dense_matrix,
    expect_ok,
    expect_rows,
    logits_by_index,
    tei_tokens,
)
from backends.remote.transport import Answer, Deadline, RemoteClient
from engine.errors import Unavailable
from engine.types import (
    DenseMatrix,
    Encoding,
    ModelInfo,
    Operation,
    Output,
    Scores,
    TokenWeights,
)

__all__ = ["TeiDialect"]

_PROBE_TEXT = "dimension probe"


class _Info(msgspec.Struct):
    model_id: str
    model_type: dict[str, dict[str, object]]
    max_input_length: int
    max_client_batch_size: int
    version: str = ""


class _Rank(msgspec.Struct):
    index: int
    score: float


class _SparseValue(msgspec.Struct):
    index: int
    value: float


class TeiDialect(TeiTokenRoutes):
    kind: Kind = "tei"
    halves_too_large: bool = False

    def __init__(self, *, truncate: bool) -> None:
        self._truncate = truncate

    async def probe(self, client: RemoteClient, deadline: Deadline) -> Offer:
        answer = await client.get("/info", deadline)
        expect_ok(answer, "/info")
        info = decode(answer, _Info, client, "/info")
        model_type, details = next(iter(info.model_type.items()), ("unknown", {}))
        models: dict[Operation, ModelInfo] = {}
        missing: dict[Operation, str] = {}
        outputs: frozenset[Output] = frozenset()
        sparse_why = (
            f"TEI computes sparse vectors for SPLADE models only, and {info.model_id} is not "
            "one (its /embed_sparse answers 424); serve bge-m3 sparse from the flag backend"
        )
        if model_type == "embedding" and details.get("pooling") == "splade":
            models[Operation.SPARSE] = ModelInfo(info.model_id, info.max_input_length, 0)
            outputs = frozenset({Output.SPARSE})
            missing[Operation.EMBED] = f"{info.model_id} is a SPLADE model: no dense vectors"
        elif model_type == "embedding":
            dense, _ = await self._embed(client, [_PROBE_TEXT], deadline)
            models[Operation.EMBED] = ModelInfo(
                info.model_id, info.max_input_length, 0, dimension=int(dense.shape[1])
            )
            outputs = frozenset({Output.DENSE})
            missing[Operation.SPARSE] = sparse_why
        elif model_type == "reranker":
            models[Operation.RERANK] = ModelInfo(info.model_id, info.max_input_length, 0)
        container = f"{info.model_id} is a TEI {model_type} container"
        missing = {op: missing.get(op, container) for op in Operation if op not in models}
        return Offer(
            kind=self.kind,
            operations=frozenset(models),
            outputs=outputs,
            models=models,
            max_batch_size=max(1, info.max_client_batch_size),
            version=info.version,
            missing=missing,
        )

    async def encode(
        self,
        client: RemoteClient,
        texts: Sequence[str],
        outputs: frozenset[Output],
        offer: Offer,
        deadline: Deadline,
    ) -> Encoding:
        if outputs == {Output.DENSE}:
            dense, tokens = await self._embed(client, texts, deadline)
            return Encoding(token_count=tokens, dense=dense)
        if outputs == {Output.SPARSE}:
            body = {"inputs": list(texts), "truncate": self._truncate}
            answer = await client.post("/embed_sparse", body, deadline)
            rows = decode(answer, list[list[_SparseValue]], client, "/embed_sparse")
            expect_rows(len(rows), len(texts), client, "/embed_sparse")
            lexical = tuple(
                TokenWeights(
                    token_ids=np.array([v.index for v in row], dtype=np.int64),
                    weights=np.array([v.value for v in row], dtype=np.float32),
                )
                for row in rows
            )
            tokens = await self._token_count(client, answer, texts, deadline)
            return Encoding(token_count=tokens, lexical=lexical)
        raise Unavailable(f"the TEI at {client.url} computes one kind of vector per container")

    async def score(
        self,
        client: RemoteClient,
        query: str,
        documents: Sequence[str],
        offer: Offer,
        deadline: Deadline,
    ) -> Scores:
        body = {
            "query": query,
            "texts": list(documents),
            "raw_scores": True,
            "truncate": self._truncate,
        }
        answer = await client.post("/rerank", body, deadline)
        ranks = decode(answer, list[_Rank], client, "/rerank")
        ranked = [(rank.index, rank.score) for rank in ranks]
        logits = logits_by_index(ranked, len(documents), client, "/rerank")
        header = answer.headers.get("x-compute-tokens", "")
        if header.isdigit():
            tokens = int(header)
        else:
            # <s> q </s></s> d </s> has the tokens of <s> q </s> plus those of <s> d </s>.
            query_ids, *document_ids = await self._ids(client, [query, *documents], deadline)
            tokens = len(documents) * len(query_ids) + sum(len(ids) for ids in document_ids)
        return Scores(logits=logits, token_count=tokens)

    async def tokenize(
        self, client: RemoteClient, texts: Sequence[str], offer: Offer, deadline: Deadline
    ) -> tuple[list[int], ...]:
        return await self._ids(client, texts, deadline)

    async def _ids(
        self, client: RemoteClient, texts: Sequence[str], deadline: Deadline
    ) -> tuple[list[int], ...]:
        rows = await tei_tokens(client, texts, True, deadline)
        return tuple([token.id for token in row] for row in rows)

    async def _embed(
        self, client: RemoteClient, texts: Sequence[str], deadline: Deadline
    ) -> tuple[DenseMatrix, int]:
        body = {"inputs": list(texts), "truncate": self._truncate, "normalize": True}
        answer = await client.post("/embed", body, deadline)
        rows = decode(answer, list[list[float]], client, "/embed")
        dense = dense_matrix(rows, len(texts), client, "/embed")
        tokens = await self._token_count(client, answer, texts, deadline)
        return dense, tokens

    async def _token_count(
        self, client: RemoteClient, answer: Answer, texts: Sequence[str], deadline: Deadline
    ) -> int:
        header = answer.headers.get("x-compute-tokens", "")
        if header.isdigit():
            return int(header)
        # A proxy in front of TEI dropped the header: count what was sent, not guess.
        return sum(len(ids) for ids in await self._ids(client, texts, deadline))
