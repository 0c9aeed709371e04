"""Text Embeddings Inference (TEI 1.9): one model per container.

An embedding container serves dense vectors (``POST /embed``), a SPLADE one
sparse vectors (``POST /embed_sparse``; any other model answers 424 there), a
reranker container rerank logits (``POST /rerank``). ``GET /info`` says which,
and the batch limit: ``max_client_batch_size`` inputs a request, and no more than
``max_concurrent_requests``, since TEI takes a permit per input and refuses (429)
a request it cannot give them all (router/src/http/server.rs, core/src/infer.rs).
Token usage comes from TEI's ``x-compute-tokens`` header. Where a proxy strips it
(the probe finds out), each chunk's tokens are counted by ``POST /tokenize`` sent
beside it, never after it; a reranker's chunks then hold one document fewer than
the limit, so the query and the chunk's documents fit one ``/tokenize``.

TEI refuses as 422 both an input over its token limit (the request's fault:
InputTooLarge) and a batch over its limit, which the probe's limit rules out
unless the container changed since (RemoteChanged: the endpoint re-probes it).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Sequence
from typing import Self, TypeVar

import msgspec
import numpy as np

from backends.remote.answers import (
    decoded,
    dense_matrix,
    expect_ok,
    expect_rows,
    header_tokens,
    in_order,
)
from backends.remote.contract import Offer, Remote, RemoteChanged
from backends.remote.transport import Answer, Deadline, RemoteClient, together
from engine.errors import InputTooLarge, InvalidInput, Unavailable
from engine.settings import Settings
from engine.types import (
    DEFAULT_OPTIONS,
    DenseMatrix,
    EncodeOptions,
    Encoding,
    ModelInfo,
    Operation,
    Output,
    Scores,
    Token,
    TokenWeights,
)

__all__ = ["TeiRemote", "TeiRoutes"]

A = TypeVar("A")
B = TypeVar("B")

_PROBE_TEXT = "dimension probe"
# TEI's words (router/src/http/server.rs, every batch handler; core/src/tokenization.rs,
# tokenize_input and encode_input), each answered 422 Validation.
_BATCH_REFUSED = re.compile(r"batch size (\d+) > maximum allowed batch size (\d+)")
_TOO_LONG = re.compile(r"must have less than \d+ (tokens|characters)\. Given: \d+")


class _Info(msgspec.Struct):
    model_id: str
    model_type: dict[str, dict[str, object]]
    max_input_length: int
    max_client_batch_size: int
    max_concurrent_requests: int = 512
    version: str = ""


class _Rank(msgspec.Struct):
    index: int
    score: float


class _SparseValue(msgspec.Struct):
    index: int
    value: float


class TeiRoutes(Remote):
    """``tokenize``, ``tokens`` and ``decode`` through ``POST /tokenize`` and ``/decode``:
    TEI's routes, which a bge-serve speaks too."""

    async def _sent(self, path: str, body: object, deadline: Deadline) -> Answer:
        """``body`` posted to ``path``: the answer, or the transport's error."""
        return await self.client.post(path, body, deadline)

    async def token_ids(self, texts: Sequence[str], deadline: Deadline) -> tuple[list[int], ...]:
        rows = await self.tokens(texts, True, deadline)
        return tuple([token.id for token in row] for row in rows)

    async def tokens(
        self, texts: Sequence[str], add_special_tokens: bool, deadline: Deadline
    ) -> tuple[tuple[Token, ...], ...]:
        body = {"inputs": list(texts), "add_special_tokens": add_special_tokens}
        answer = await self._sent("/tokenize", body, deadline)
        rows = decoded(answer, list[tuple[Token, ...]])  # TEI's SimpleToken is our Token
        expect_rows(answer, len(rows), len(texts))
        return tuple(rows)

    async def decode(
        self, ids: Sequence[Sequence[int]], skip_special_tokens: bool, deadline: Deadline
    ) -> tuple[str, ...]:
        body = {"ids": [list(row) for row in ids], "skip_special_tokens": skip_special_tokens}
        answer = await self._sent("/decode", body, deadline)
        texts = decoded(answer, list[str])
        expect_rows(answer, len(texts), len(ids))
        return tuple(texts)


class TeiRemote(TeiRoutes):
    kind = "tei"
    name = "TEI"

    def __init__(self, client: RemoteClient, info: _Info, *, truncate: bool) -> None:
        super().__init__(client)
        self._truncate = truncate
        # The inputs one request may hold, the token limit TEI truncates to, and whether
        # answers carry x-compute-tokens (until one comes without it).
        self._limit = max(1, min(info.max_client_batch_size, info.max_concurrent_requests))
        self._max_tokens = info.max_input_length
        self._counted = True

    @classmethod
    async def probe(cls, client: RemoteClient, settings: Settings, deadline: Deadline) -> Self:
        answer = await client.get("/info", deadline)
        expect_ok(answer)
        info = decoded(answer, _Info)
        remote = cls(client, info, truncate=settings.truncate)
        batch_size = remote._limit
        model_type, details = next(iter(info.model_type.items()), ("unknown", {}))
        models: dict[Operation, ModelInfo] = {}
        missing: dict[Operation, str] = {}
        outputs: frozenset[Output] = frozenset()
        if model_type == "embedding" and details.get("pooling") == "splade":
            models[Operation.LEXICAL_COLBERT] = ModelInfo(info.model_id, info.max_input_length, 0)
            outputs = frozenset({Output.LEXICAL})
            missing[Operation.EMBED] = f"{info.model_id} is a SPLADE model: no dense vectors"
        elif model_type == "embedding":
            dense, _ = await remote._embed([_PROBE_TEXT], deadline)
            models[Operation.EMBED] = ModelInfo(
                info.model_id, info.max_input_length, 0, dimension=int(dense.shape[1])
            )
            outputs = frozenset({Output.DENSE})
            missing[Operation.LEXICAL_COLBERT] = (
                f"TEI computes sparse vectors for SPLADE models only, and {info.model_id} is "
                "not one (its /embed_sparse answers 424); serve bge-m3 sparse from the flag "
                "backend"
            )
        elif model_type == "reranker":
            models[Operation.RERANK] = ModelInfo(info.model_id, info.max_input_length, 0)
            # Truncated, so that no token limit refuses the probe.
            probe = await remote._rerank("probe", ["probe"], deadline, truncate=True)
            remote._counted = header_tokens(probe) is not None
            if not remote._counted and remote._limit > 1:
                # Room for the query beside a chunk's documents in the one /tokenize.
                batch_size = remote._limit - 1
        container = f"{info.model_id} is a TEI {model_type} container"
        offer = Offer.of(
            models,
            outputs=outputs,
            max_batch_size=batch_size,
            version=info.version,
            missing={op: missing.get(op, container) for op in Operation if op not in models},
        )
        return remote._serving(offer)

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
        deadline: Deadline,
    ) -> Encoding:
        if outputs == {Output.DENSE}:
            dense, tokens = await self._embed(texts, deadline, options)
            return Encoding(token_count=tokens, dense=dense)
        if outputs == {Output.LEXICAL}:
            body = {"inputs": list(texts), "truncate": self._truncate, **_direction(options)}
            answer, tokens = await self._posted("/embed_sparse", body, texts, deadline)
            rows = decoded(answer, list[list[_SparseValue]])
            expect_rows(answer, len(rows), len(texts))
            lexical = tuple(
                TokenWeights(
                    token_ids=np.array([v.index for v in row], dtype=np.int64),
                    weights=np.array([v.value for v in row], dtype=np.float32),
                )
                for row in rows
            )
            return Encoding(token_count=tokens, lexical=lexical)
        raise Unavailable(f"the TEI at {self.url} computes one kind of vector per container")

    async def score(self, query: str, documents: Sequence[str], deadline: Deadline) -> Scores:
        counted: int | None = None
        if self._counted:
            answer = await self._rerank(query, documents, deadline)
            counted = header_tokens(answer)
        else:
            # The counting goes beside the rerank, in the same number of round trips.
            answer, counted = await _beside(
                self._rerank(query, documents, deadline),
                self._pair_tokens(query, documents, deadline),
            )
        ranks = in_order(answer, decoded(answer, list[_Rank]), len(documents))
        logits = np.array([rank.score for rank in ranks], dtype=np.float32)
        if counted is None:  # the header went missing after the probe
            counted = await self._pair_tokens(query, documents, deadline)
        return Scores(logits=logits, token_count=counted)

    async def _rerank(
        self,
        query: str,
        documents: Sequence[str],
        deadline: Deadline,
        *,
        truncate: bool | None = None,
    ) -> Answer:
        body = {
            "query": query,
            "texts": list(documents),
            "raw_scores": True,
            "truncate": self._truncate if truncate is None else truncate,
        }
        return await self._sent("/rerank", body, deadline)

    async def _pair_tokens(self, query: str, documents: Sequence[str], deadline: Deadline) -> int:
        """What TEI counts for the (query, document) pairs: <s> q </s></s> d </s> has the
        tokens of <s> q </s> plus those of <s> d </s>, cut to its limit when truncating.
        Sent in requests of the remote's limit, together."""
        texts = [query, *documents]
        parts = await together(
            self.token_ids(texts[start : start + self._limit], deadline)
            for start in range(0, len(texts), self._limit)
        )
        query_ids, *document_ids = [ids for part in parts for ids in part]
        pairs = [len(query_ids) + len(ids) for ids in document_ids]
        if self._truncate and self._max_tokens:
            pairs = [min(pair, self._max_tokens) for pair in pairs]
        return sum(pairs)

    async def _embed(
        self, texts: Sequence[str], deadline: Deadline, options: EncodeOptions = DEFAULT_OPTIONS
    ) -> tuple[DenseMatrix, int]:
        body = {
            "inputs": list(texts),
            "truncate": self._truncate,
            "normalize": options.normalize,
            **_direction(options),
        }
        answer, tokens = await self._posted("/embed", body, texts, deadline)
        rows = decoded(answer, list[list[float]])
        return dense_matrix(answer, rows, len(texts), normalize=options.normalize), tokens

    async def _posted(
        self, path: str, body: object, texts: Sequence[str], deadline: Deadline
    ) -> tuple[Answer, int]:
        """``body``'s answer and the tokens TEI ran ``texts`` on: its header, or, where a
        proxy drops it, its ``/tokenize`` of them, sent beside the request (the chunk is
        within the limit), cut to the token limit when truncating."""
        if self._counted:
            answer = await self._sent(path, body, deadline)
            header = header_tokens(answer)
            if header is not None:
                return answer, header
            decoded(answer, object)  # a broken answer lacks the header too
            self._counted = False  # counted beside from now on
            return answer, await self._text_tokens(texts, deadline)
        return await _beside(
            self._sent(path, body, deadline),
            self._text_tokens(texts, deadline),
        )

    async def _text_tokens(self, texts: Sequence[str], deadline: Deadline) -> int:
        counts = [len(ids) for ids in await self.token_ids(texts, deadline)]
        if self._truncate and self._max_tokens:
            counts = [min(count, self._max_tokens) for count in counts]
        return sum(counts)

    async def _sent(self, path: str, body: object, deadline: Deadline) -> Answer:
        """With TEI's 422s told apart: an input over the token or character limit is too
        large; a batch over the limit the probe found means the container changed."""
        try:
            return await self.client.post(path, body, deadline)
        except InvalidInput as exc:
            if _TOO_LONG.search(exc.message):
                raise InputTooLarge(exc.message, param=exc.param) from exc
            refused = _BATCH_REFUSED.search(exc.message)
            if refused is None:
                raise
            raise RemoteChanged(
                f"the remote {self.url} now takes at most {refused[2]} inputs a request "
                f"(it refused {refused[1]}), fewer than when it was probed; probing it again"
            ) from exc


async def _beside(call: Awaitable[A], counting: Awaitable[B]) -> tuple[A, B]:
    """Both at once. A failure is raised as itself, not in an ExceptionGroup, the call's
    before the counting's (it names the route the client asked for); the other is
    cancelled."""
    called, counted = asyncio.ensure_future(call), asyncio.ensure_future(counting)
    try:
        answer = await called
        return answer, await counted
    finally:
        called.cancel()
        counted.cancel()


def _direction(options: EncodeOptions) -> dict[str, str]:
    """TEI's truncation_direction, sent only off its default (Right)."""
    return {"truncation_direction": "Left"} if options.truncate_left else {}
