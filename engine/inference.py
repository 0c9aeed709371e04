"""The engine's public operations: validate, route to a backend, finish the answer.

Everything a client could get wrong is checked here, once, before any backend
sees it; everything a backend leaves raw (sparse index mapping, dimension
truncation, rerank sorting and top_n) is finished here, the same way for all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from engine.backend import Backend, BackendHealth
from engine.budget import (
    TOKEN_JSON_BYTES,
    AnswerPool,
    Budget,
    answer_bytes,
    bounded_tokens,
    chunks,
    counted_prefix,
    token_answer_bytes,
    words_after,
)
from engine.cache import CacheStats
from engine.cached_encoding import CachedEncoder, CachedModel
from engine.errors import (
    InputTooLarge,
    InvalidInput,
    StartupError,
    Unavailable,
    without_paths,
)
from engine.model_names import ModelNames
from engine.random_weights import random_weight_warnings
from engine.router import CHAIN_SETTING, Router
from engine.settings import Settings
from engine.sparse_mapping import SparseMapper, SparseMapping
from engine.telemetry import Telemetry
from engine.types import (
    DEFAULT_OPTIONS,
    ColbertMatrix,
    DenseMatrix,
    EncodeOptions,
    Encoding,
    HybridEmbeddings,
    ModelInfo,
    Operation,
    Output,
    RankedDocument,
    Ranking,
    Scores,
    SparseVector,
    Token,
)

__all__ = ["EngineHealth", "InferenceEngine", "sigmoid"]

log = logging.getLogger(__name__)

OptionFields = Mapping[str, tuple[str, str]]
"""Each EncodeOptions field a backend may not honour: the request field that asks for it,
and what asking means (``{"truncate_left": ("truncation_direction", "Left (…)")}``)."""

HealthStatus = Literal["ok", "loading", "degraded"]
# Seconds a client is told to wait while models load.
_LOADING_RETRY_AFTER = 5
# Query groups of one score_pairs call sent to the backend at once.
_PAIR_GROUPS_IN_FLIGHT = 16
# A remote that has not said its dimension is estimated at bge-m3's.
_UNKNOWN_DIMENSION = 1024
# The backend that computes elsewhere (BackendName), where its own budgets apply.
_REMOTE = "remote"


@dataclass(frozen=True, slots=True)
class EngineHealth:
    status: HealthStatus
    chains: dict[Operation, list[str]]
    serving: dict[Operation, str | None]
    backends: dict[str, BackendHealth]
    loaded: dict[Operation, bool]
    error: str | None = None


class InferenceEngine:
    def __init__(self, settings: Settings, chains: Mapping[Operation, Sequence[Backend]]) -> None:
        self._settings = settings
        self.telemetry = Telemetry()
        self.cache_stats = CacheStats()
        self._cache = CachedEncoder(settings, self.cache_stats)
        self._router = Router(
            chains,
            breaker_threshold=settings.breaker_threshold,
            breaker_cooldown_s=settings.breaker_cooldown_s,
            telemetry=self.telemetry,
        )
        operations = self._router.operations
        self._names = ModelNames.from_settings(
            settings,
            embeds=bool(operations & {Operation.EMBED, Operation.SPARSE}),
            reranks=Operation.RERANK in operations,
        )
        self.warnings = random_weight_warnings(settings)
        self._started = False
        self._start_error: str | None = None
        self._mappers: dict[SparseMapping, SparseMapper] = {}
        self._budget = Budget.from_settings(settings)
        self._answers = AnswerPool(settings.max_inflight_response_bytes)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start every backend (each loads its models once), then check them against settings."""
        for warning in self.warnings:
            log.warning("%s", warning)
        try:
            for backend in self._router.backends:
                began = time.perf_counter()
                await backend.start()
                took = self.telemetry.load_seconds[backend.name] = time.perf_counter() - began
                log.info("%s backend: started in %.1f s", backend.name, took)
            self._check_models()
        except BaseException as exc:
            error = str(exc) or type(exc).__name__
            # Clients see it (/health, 503s); the server's layout only when debugging.
            debugging = self._settings.log_level == "debug"
            self._start_error = error if debugging else without_paths(error)
            raise
        self._started = True

    def _check_models(self) -> None:
        """Dimensions against EMBEDDING_SIZE and across each chain, for the backends that
        are up; a remote that is down checks its own when it comes back."""
        settings = self._settings
        for op in (Operation.EMBED, Operation.SPARSE):
            if op not in self._router.operations:
                continue
            seen: dict[int, str] = {}
            for backend in self._router.chain(op):
                if not backend.health().loaded:
                    continue
                info = backend.model_info(op)
                expected = settings.embedding_size
                if expected is not None and info.dimension != expected:
                    raise StartupError(
                        f"EMBEDDING_SIZE={settings.embedding_size} but {info.name} "
                        f"produces {info.dimension}-dimensional vectors ({backend.name} backend)"
                    )
                if info.dimension is not None:
                    seen.setdefault(info.dimension, f"{backend.name} ({info.name})")
            if len(seen) > 1:
                found = ", ".join(f"{who}: {dim}" for dim, who in seen.items())
                raise StartupError(
                    f"{CHAIN_SETTING[op]}: its backends produce vectors of different "
                    f"dimensions ({found}); falling back from one to another would mix "
                    "vector spaces"
                )

    async def stop(self) -> None:
        for backend in self._router.backends:
            await backend.stop()
        await self._cache.close()

    def health(self) -> EngineHealth:
        router = self._router
        backends = {
            b.name: _with_breaker(b.health(), router.breaker_open(b.name)) for b in router.backends
        }
        # "loading" until every backend has started, even one whose remote is down.
        if self._start_error is None and not self._started:
            status: HealthStatus = "loading"
        elif self._start_error is not None or not all(h.healthy for h in backends.values()):
            status = "degraded"
        else:
            status = "ok"
        operations = sorted(router.operations)
        return EngineHealth(
            status=status,
            chains={op: [b.name for b in router.chain(op)] for op in operations},
            serving={op: router.serving(op) for op in operations},
            backends=backends,
            loaded={
                op: self._started and all(backends[b.name].loaded for b in router.chain(op))
                for op in operations
            },
            error=self._start_error,
        )

    # -- models ----------------------------------------------------------------------

    @property
    def operations(self) -> frozenset[Operation]:
        return self._router.operations

    def sparse_index_space(self, mapping: SparseMapping | None = None) -> int:
        return self._mapper(mapping).index_space

    def model_info(self, operation: Operation) -> ModelInfo:
        """The model of the first backend in the chain that has one loaded (a remote that
        is down has none)."""
        self._check_ready(operation)
        chain = self._router.chain(operation)
        for backend in chain:
            if backend.health().loaded:
                return backend.model_info(operation)
        return chain[0].model_info(operation)

    def served_model(self, operation: Operation, requested: str | None) -> str:
        """The served model's public name; raises ModelNotFound when ``requested`` names
        another (the 404 lists the names it accepts)."""
        return self._names.check(self.model_name(operation), requested, str(operation))

    def model_name(self, operation: Operation) -> str:
        """The public name (EMBEDDING_SERVED_NAME / RERANKER_SERVED_NAME), never a path."""
        if operation not in self._router.operations:
            raise Unavailable(f"{operation} is not served by this deployment")
        if operation is Operation.RERANK:
            return self._names.reranker
        return self._names.embedding

    @property
    def cache_store(self) -> str:
        """Where embeddings are cached: memory, redis, or none."""
        return self._cache.store_name

    def breaker_open(self, backend: str) -> bool:
        return self._router.breaker_open(backend)

    @property
    def names(self) -> ModelNames:
        return self._names

    # -- operations ------------------------------------------------------------------

    async def embed_dense(
        self,
        texts: Sequence[str],
        *,
        dimensions: int | None = None,
        truncate: bool | None = None,
        field: str = "input",
        normalize: bool = True,
        truncate_left: bool = False,
        option_fields: OptionFields | None = None,
    ) -> tuple[DenseMatrix, int]:
        result = await self.embed_hybrid(
            texts,
            frozenset({Output.DENSE}),
            dimensions=dimensions,
            truncate=truncate,
            field=field,
            normalize=normalize,
            truncate_left=truncate_left,
            option_fields=option_fields,
        )
        assert result.dense is not None
        return result.dense, result.prompt_tokens

    async def embed_sparse(
        self,
        texts: Sequence[str],
        *,
        mapping: SparseMapping | None = None,
        truncate: bool | None = None,
        field: str = "input",
        truncate_left: bool = False,
    ) -> tuple[tuple[SparseVector, ...], int]:
        result = await self.embed_hybrid(
            texts,
            frozenset({Output.SPARSE}),
            mapping=mapping,
            truncate=truncate,
            field=field,
            truncate_left=truncate_left,
        )
        assert result.sparse is not None
        return result.sparse, result.prompt_tokens

    async def embed_colbert(
        self,
        texts: Sequence[str],
        *,
        truncate: bool | None = None,
        field: str = "input",
        truncate_left: bool = False,
    ) -> tuple[tuple[ColbertMatrix, ...], int]:
        result = await self.embed_hybrid(
            texts,
            frozenset({Output.COLBERT}),
            truncate=truncate,
            field=field,
            truncate_left=truncate_left,
        )
        assert result.colbert is not None
        return result.colbert, result.prompt_tokens

    async def embed_hybrid(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        *,
        dimensions: int | None = None,
        mapping: SparseMapping | None = None,
        truncate: bool | None = None,
        field: str = "input",
        normalize: bool = True,
        truncate_left: bool = False,
        option_fields: OptionFields | None = None,
    ) -> HybridEmbeddings:
        """Any subset of dense / sparse / ColBERT for ``texts`` from one forward pass;
        ``mapping`` overrides SPARSE_TOKEN_MAPPING and ``truncate`` TRUNCATE for this call.
        ``normalize`` off: dense vectors as the model pools them (TEI's normalize false);
        ``truncate_left``: a text over the token limit keeps its end (TEI's Left).
        ``option_fields``: how the request asked for an option, where not as TEI does
        (a 422 for one no backend honours names it so)."""
        if not outputs:
            raise InvalidInput("ask for at least one of dense, sparse, colbert")
        operation = Operation.EMBED if outputs == {Output.DENSE} else Operation.SPARSE
        self._check_ready(operation)
        self._check_texts(texts, field)
        if dimensions is not None:
            self._check_dimensions(operation, dimensions)
        truncating = self._settings.truncate if truncate is None else truncate
        # Only what changes the answer: without truncation no text is cut at either end.
        options = EncodeOptions(
            normalize=normalize or Output.DENSE not in outputs,
            truncate_left=truncate_left and truncating,
        )
        self._check_options(operation, options, {**_OPTION_FIELDS, **(option_fields or {})})
        counts = None if truncating else await self._check_token_counts(operation, texts, field)
        size = await self._check_budget(
            operation, texts, outputs, field, options.truncate_left, counts
        )
        with self._answers.reserved(size):
            encoding = await self._encode(operation, texts, outputs, options)
        self._count(operation, len(texts), encoding.token_count)
        dense = encoding.dense
        if dense is not None and dimensions is not None and dimensions < dense.shape[1]:
            # As TEI: cut, then normalise only what is served normalised.
            dense = dense[:, :dimensions]
            dense = _normalize(dense) if options.normalize else np.ascontiguousarray(dense)
        sparse = None
        if encoding.lexical is not None:
            mapper = self._mapper(mapping)
            sparse = tuple(mapper.map(weights) for weights in encoding.lexical)
        return HybridEmbeddings(
            prompt_tokens=encoding.token_count,
            dense=dense if Output.DENSE in outputs else None,
            sparse=sparse if Output.SPARSE in outputs else None,
            colbert=encoding.colbert if Output.COLBERT in outputs else None,
        )

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> Ranking:
        """Documents scored against ``query``, best first, cut to ``top_n``; each document
        first cut to ``max_tokens_per_doc`` tokens (Cohere v2's field)."""
        self._check_ready(Operation.RERANK)
        if not _visible(query):
            raise InvalidInput(f"`query` {_INVISIBLE_TEXT}", param="query")
        if len(query) > self._settings.max_text_chars:
            raise InputTooLarge(
                f"`query` has {len(query)} characters; the limit is "
                f"{self._settings.max_text_chars} (MAX_TEXT_CHARS)",
                param="query",
            )
        self._check_texts(documents, "documents")
        if top_n is not None and top_n < 1:
            raise InvalidInput("`top_n` must be at least 1", param="top_n")
        if max_tokens_per_doc is not None:
            documents = await self._cut_documents(documents, max_tokens_per_doc)
        await self._check_rerank_budget(query, documents)
        scores = await self._router.call(Operation.RERANK, lambda b: b.score(query, documents))
        self._count(Operation.RERANK, len(documents), scores.token_count)
        logits = scores.logits.astype(np.float64)
        probabilities = sigmoid(logits)
        # Stable sort on the negated logit: ties keep input order.
        order = np.argsort(-logits, kind="stable")[: top_n or len(documents)]
        results = tuple(
            RankedDocument(index=int(i), logit=float(logits[i]), score=float(probabilities[i]))
            for i in order
        )
        return Ranking(results=results, prompt_tokens=scores.token_count)

    async def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, field: str | None = "pairs"
    ) -> Scores:
        """Raw logits of (query, passage) pairs in input order. Pairs that share a query go
        to the backend together, and the groups go at once, so the micro-batcher runs them
        in shared passes rather than one pass per pair. ``field`` names the pairs in errors
        (``pairs[3].query``); None: one pair whose fields are ``query`` and ``passage``."""
        self._check_ready(Operation.RERANK)
        where = field or "pairs"
        if len(pairs) == 0:
            raise InvalidInput(f"`{where}` must not be empty", param=where)
        for part, key in enumerate(("query", "passage")):
            self._check_texts(
                [pair[part] for pair in pairs],
                where,
                functools.partial(_pair_field, field, key),
            )
        groups: dict[str, list[int]] = {}
        for position, (query, _) in enumerate(pairs):
            groups.setdefault(query, []).append(position)

        # Bounded: each group is one request in the backend's queue (MAX_QUEUED_REQUESTS),
        # and a batch of distinct queries must not fill it alone.
        in_flight = asyncio.Semaphore(_PAIR_GROUPS_IN_FLIGHT)

        async def scored(query: str, positions: list[int]) -> Scores:
            passages = [pairs[i][1] for i in positions]
            async with in_flight:
                return await self._router.call(Operation.RERANK, lambda b: b.score(query, passages))

        answers = await asyncio.gather(*(scored(q, ps) for q, ps in groups.items()))
        logits = np.empty(len(pairs), dtype=np.float32)
        for positions, answer in zip(groups.values(), answers, strict=True):
            logits[positions] = answer.logits
        tokens = sum(a.token_count for a in answers)
        self._count(Operation.RERANK, len(pairs), tokens)
        return Scores(logits=logits, token_count=tokens)

    async def _cut_documents(self, documents: Sequence[str], limit: int) -> Sequence[str]:
        if limit < 1:
            raise InvalidInput(
                "`max_tokens_per_doc` must be at least 1", param="max_tokens_per_doc"
            )
        if limit >= self.model_info(Operation.RERANK).max_tokens:
            return documents  # the reranker cuts pairs to its own limit anyway
        # Counted by the embedding tokenizer: bge-m3 and bge-reranker-v2-m3 share XLM-R's.
        return await self.cut_to_tokens(documents, limit, field="documents")

    async def cut_to_tokens(
        self, texts: Sequence[str], max_tokens: int, *, from_start: bool = False, field: str
    ) -> list[str]:
        """Each text cut to its first (``from_start``: last) ``max_tokens`` tokens, special
        tokens not counted, by the embedding tokenizer.

        A long text is tokenized by its first (last) ``max_tokens`` x 12 characters, and that
        cut is kept only where two words lie between the last kept token and the cut (the
        BGE tokenizers make tokens word by word, so the cut did not change them); otherwise
        the whole text is tokenized, so a text is never cut differently."""
        pieces = [counted_prefix(t, max_tokens, from_left=from_start) for t in texts]
        rows = await self.tokens(pieces, add_special_tokens=False, field=field)
        cut: list[str] = []
        for text, piece, row in zip(texts, pieces, rows, strict=True):
            kept = _kept(piece, row, max_tokens, from_start=from_start, whole=piece == text)
            if kept is None:
                (row,) = await self.tokens([text], add_special_tokens=False, field=field)
                kept = _kept(text, row, max_tokens, from_start=from_start, whole=True)
            cut.append(text if kept is None else kept)
        return cut

    async def tokens(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, field: str = "inputs"
    ) -> tuple[tuple[Token, ...], ...]:
        """Each text's tokens, ids, text and byte offsets (the embedding tokenizer), asked
        for in chunks; past MAX_REQUEST_TOKENS or MAX_RESPONSE_BYTES (~80 bytes a token as
        an answer) it stops at the chunk that crossed and answers 413."""
        operation = self._embedding_operation()
        self._check_ready(operation)
        self._check_texts(texts, field)
        rows: list[tuple[Token, ...]] = []
        size = count = 0
        with self._answers.reserved(self._token_answer_bound(texts)):
            for run in chunks(texts):
                part = await self._router.call(
                    operation,
                    functools.partial(_tokens, texts[run], add_special_tokens=add_special_tokens),
                )
                rows.extend(part)
                size += token_answer_bytes(part)
                count += sum(len(row) for row in part)
                self._budget.check_tokens_answer(
                    size, count, field=field, done=run.stop, of=len(texts)
                )
        return tuple(rows)

    async def decode(
        self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool = True
    ) -> tuple[str, ...]:
        operation = self._embedding_operation()
        self._check_ready(operation)
        if len(ids) == 0 or any(len(row) == 0 for row in ids):
            raise InvalidInput("`ids` must hold at least one token id per row", param="ids")
        if len(ids) > self._settings.max_batch_size:
            raise InputTooLarge(
                f"`ids` has {len(ids)} rows; the limit is {self._settings.max_batch_size} "
                "(MAX_BATCH_SIZE)",
                param="ids",
            )
        return await self._router.call(
            operation, lambda b: b.decode(ids, skip_special_tokens=skip_special_tokens)
        )

    async def tokenize(
        self, texts: Sequence[str], *, field: str = "input"
    ) -> tuple[list[int], ...]:
        operation = self._embedding_operation()
        self._check_ready(operation)
        self._check_texts(texts, field)
        rows: list[list[int]] = []
        count = 0
        with self._answers.reserved(self._token_answer_bound(texts)):
            for run in chunks(texts):
                part = await self._router.call(operation, functools.partial(_ids, texts[run]))
                rows.extend(part)
                count += sum(len(row) for row in part)
                self._budget.check_tokens_answer(
                    0, count, field=field, done=run.stop, of=len(texts)
                )
        return tuple(rows)

    def _token_answer_bound(self, texts: Sequence[str]) -> int:
        """A tokens answer's size at most, uncounted (for MAX_INFLIGHT_RESPONSE_BYTES)."""
        tokens = sum(bounded_tokens(texts, 0))
        return min(tokens * TOKEN_JSON_BYTES, self._budget.max_answer_bytes)

    # -- internals -------------------------------------------------------------------

    async def _encode(
        self,
        operation: Operation,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
    ) -> Encoding:
        def compute(asked: Sequence[str]) -> Awaitable[Encoding]:
            return self._computed(operation, asked, outputs, options)

        try:
            info = self.model_info(operation)
        except Unavailable:
            # No backend has a model yet (a remote not reached): nothing to key entries
            # by, and the router's answer (a fallback, or 503 with Retry-After) is the one.
            return await compute(texts)
        model = CachedModel.of(info, self._router.chain(operation), operation)
        return await self._cache.encode(texts, outputs, options, model, compute)

    async def _computed(
        self,
        operation: Operation,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
    ) -> Encoding:
        """``texts`` encoded by the first backend of the chain that can; a backend that
        does not honour ``options`` is passed by, as one that is down."""
        if options == DEFAULT_OPTIONS:
            return await self._router.call(operation, lambda b: b.encode(texts, outputs))
        wanted = _departures(options)

        async def encoded(backend: Backend) -> Encoding:
            if not wanted <= backend.capabilities.options:
                raise Unavailable(f"the {backend.name} backend cannot: {_refusal(backend, wanted)}")
            return await backend.encode(texts, outputs, options)

        return await self._router.call(operation, encoded)

    def _check_options(
        self, operation: Operation, options: EncodeOptions, fields: OptionFields
    ) -> None:
        """A request no backend of the chain can honour is the client's to change: 422."""
        wanted = _departures(options)
        chain = self._router.chain(operation)
        if not wanted or any(wanted <= b.capabilities.options for b in chain):
            return
        # Named: an option no backend honours, else the first (each is honoured alone).
        option = next(
            (o for o in sorted(wanted) if all(o not in b.capabilities.options for b in chain)),
            min(wanted),
        )
        param, meaning = fields[option]
        reasons = "; ".join(
            f"the {b.name} backend: {b.capabilities.refusals.get(option, 'not supported')}"
            for b in chain
            if option not in b.capabilities.options
        )
        raise InvalidInput(
            f"`{param}`: {meaning} is not available from {CHAIN_SETTING[operation]} ({reasons})",
            param=param,
        )

    def _count(self, operation: Operation, items: int, tokens: int) -> None:
        self.telemetry.items[operation] += items
        self.telemetry.tokens[operation] += tokens

    def _embedding_operation(self) -> Operation:
        return Operation.EMBED if Operation.EMBED in self._router.operations else Operation.SPARSE

    def _check_ready(self, operation: Operation) -> None:
        self._router.chain(operation)  # raises Unavailable when the operation is not served
        if not self._started:
            if self._start_error is not None:
                raise Unavailable(f"the models failed to load: {self._start_error}")
            raise Unavailable("the models are still loading", retry_after=_LOADING_RETRY_AFTER)

    def _mapper(self, mapping: SparseMapping | None) -> SparseMapper:
        if Operation.SPARSE not in self._router.operations:
            raise Unavailable("sparse vectors are not served by this deployment")
        mapping = mapping or self._settings.sparse_token_mapping
        mapper = self._mappers.get(mapping)
        if mapper is None:
            space = (
                self.model_info(Operation.SPARSE).vocab_size
                if mapping == "tokenizer"
                else self._settings.sparse_index_space
            )
            # Kept: the hash mapper caches every token id it has hashed.
            mapper = self._mappers[mapping] = SparseMapper(mapping, space)
        return mapper

    def _check_texts(
        self, texts: Sequence[str], field: str, item: Callable[[int], str] | None = None
    ) -> None:
        """``item`` names the text at a position (default ``field[3]``)."""
        settings = self._settings
        name = item or (lambda position: f"{field}[{position}]")
        if len(texts) == 0:
            raise InvalidInput(f"`{field}` must not be empty", param=field)
        if len(texts) > settings.max_batch_size:
            raise InputTooLarge(
                f"`{field}` has {len(texts)} items; the limit is {settings.max_batch_size} "
                "(MAX_BATCH_SIZE)",
                param=field,
            )
        for position, text in enumerate(texts):
            if not _visible(text):
                where = name(position)
                raise InvalidInput(f"`{where}` {_INVISIBLE_TEXT}", param=where)
            if len(text) > settings.max_text_chars:
                where = name(position)
                raise InputTooLarge(
                    f"`{where}` has {len(text)} characters; the limit is "
                    f"{settings.max_text_chars} (MAX_TEXT_CHARS)",
                    param=where,
                )

    async def _check_token_counts(
        self, operation: Operation, texts: Sequence[str], field: str
    ) -> list[int]:
        """Each text's token count, refused 413 at the first over the limit (counted in
        chunks: a long request stops at the chunk that holds it)."""

        async def counted(part: Sequence[str], backend: Backend) -> tuple[int, list[int]]:
            # The limit of the backend that counted: a chain's remote may differ from flag.
            limit = backend.model_info(operation).max_tokens
            return limit, [len(row) for row in await backend.tokenize(part)]

        counts: list[int] = []
        for run in chunks(texts):
            limit, part = await self._router.call(operation, functools.partial(counted, texts[run]))
            for position, count in enumerate(part, start=run.start):
                if limit and count > limit:
                    raise InputTooLarge(
                        f"`{field}[{position}]` has {count} tokens; the model takes at most "
                        f"{limit} and truncation is off (TRUNCATE, or the request's truncate)",
                        param=f"{field}[{position}]",
                    )
            counts.extend(part)
        return counts

    async def _check_budget(
        self,
        operation: Operation,
        texts: Sequence[str],
        outputs: frozenset[Output],
        field: str,
        from_left: bool,
        counts: Sequence[int] | None,
    ) -> int:
        """MAX_REQUEST_TOKENS and MAX_RESPONSE_BYTES, before any pass. A request that fits
        with every text at the token limit is not counted; another is counted on each
        text's first (last) limit x 12 characters, in chunks, and refused at the first chunk
        that crosses a budget. Returns the answer's estimated size (for the process's
        MAX_INFLIGHT_RESPONSE_BYTES): from the counts, else bounded by the characters."""
        try:
            info = self.model_info(operation)
        except Unavailable:
            return 0  # no backend up to say its limits: the call that follows says why
        dimension = info.dimension or _UNKNOWN_DIMENSION
        budget = self._budget
        if counts is not None:
            budget.check(outputs, dimension, counts, field=field, texts=len(texts))
            return answer_bytes(outputs, dimension, counts)
        limit = info.max_tokens
        bound = min(
            answer_bytes(outputs, dimension, bounded_tokens(texts, limit)),
            budget.max_answer_bytes,
        )
        if limit and budget.fits_worst_case(outputs, dimension, len(texts), limit):
            return bound
        if self._router.serving(operation) == _REMOTE:
            # Counting would cost the remote a /tokenize round trip per chunk; a remote
            # bge-serve holds the same budgets and its 413 reaches the client as it is.
            return bound
        pieces = [counted_prefix(t, limit, from_left=from_left) for t in texts]
        counted: list[int] = []
        for run in chunks(pieces):
            rows = await self._router.call(operation, functools.partial(_ids, pieces[run]))
            counted.extend(min(len(row), limit) if limit else len(row) for row in rows)
            budget.check(
                outputs,
                dimension,
                counted,
                field=field,
                texts=len(texts),
                at_least=len(counted) < len(texts),
            )
        return answer_bytes(outputs, dimension, counted)

    async def _check_rerank_budget(self, query: str, documents: Sequence[str]) -> None:
        """MAX_REQUEST_TOKENS for the pairs, each at most the reranker's limit; counted by
        the embedding tokenizer (the same XLM-R one) where the worst case does not fit."""
        budget = self._budget
        try:
            limit = self.model_info(Operation.RERANK).max_tokens
        except Unavailable:
            return  # no backend up to say its limits: the call that follows says why
        if (
            len(documents) * limit <= budget.max_tokens
            or self._router.serving(Operation.RERANK) == _REMOTE
        ):
            return
        if not self._router.operations & {Operation.EMBED, Operation.SPARSE}:
            return  # nothing to count with; the reranker cuts each pair to its limit
        query_tokens = len((await self.tokenize([query], field="query"))[0])
        pieces = [counted_prefix(d, limit, from_left=False) for d in documents]
        operation = self._embedding_operation()
        counted: list[int] = []
        for run in chunks(pieces):
            rows = await self._router.call(operation, functools.partial(_ids, pieces[run]))
            counted.extend(min(query_tokens + len(row), limit) for row in rows)
            budget.check(
                frozenset(),
                0,
                counted,
                field="documents",
                texts=len(documents),
                at_least=len(counted) < len(documents),
            )

    def _check_dimensions(self, operation: Operation, dimensions: int) -> None:
        native = self.model_info(operation).dimension
        if dimensions < 1 or (native is not None and dimensions > native):
            raise InvalidInput(
                f"`dimensions` must be between 1 and {native}, got {dimensions}",
                param="dimensions",
            )


def _tokens(
    texts: Sequence[str], backend: Backend, *, add_special_tokens: bool
) -> Awaitable[tuple[tuple[Token, ...], ...]]:
    return backend.tokens(texts, add_special_tokens=add_special_tokens)


def _ids(texts: Sequence[str], backend: Backend) -> Awaitable[tuple[list[int], ...]]:
    return backend.tokenize(texts)


def _kept(
    text: str, row: Sequence[Token], max_tokens: int, *, from_start: bool, whole: bool
) -> str | None:
    """``text`` cut to ``row``'s first (last) ``max_tokens`` tokens; None where ``text`` is a
    cut that may have changed them (fewer than two words between them and its end)."""
    if len(row) <= max_tokens:
        return text if whole else None
    token = row[-max_tokens] if from_start else row[max_tokens - 1]
    at = token.start if from_start else token.stop
    if at is None:
        return text if whole else None
    data = text.encode()
    kept, rest = (data[at:], data[:at]) if from_start else (data[:at], data[at:])
    if not whole and words_after(rest.decode(errors="ignore")) < 2:
        return None
    return kept.decode()


def _with_breaker(health: BackendHealth, breaker_open: bool) -> BackendHealth:
    if not breaker_open:
        return health
    breaker = "circuit open after repeated failures; skipped until its cool-down ends"
    return dataclasses.replace(
        health,
        healthy=False,
        detail=f"{breaker}; {health.detail}" if health.detail else breaker,
    )


_OPTION_FIELDS: OptionFields = {
    "normalize": ("normalize", "false (vectors as pooled, not L2-normalised)"),
    "truncate_left": ("truncation_direction", "Left (a long text keeps its end)"),
}


def _departures(options: EncodeOptions) -> frozenset[str]:
    """The EncodeOptions fields ``options`` sets off their defaults."""
    return frozenset(
        name for name in _OPTION_FIELDS if getattr(options, name) != getattr(DEFAULT_OPTIONS, name)
    )


def _refusal(backend: Backend, wanted: frozenset[str]) -> str:
    missing = sorted(wanted - backend.capabilities.options)
    return "; ".join(backend.capabilities.refusals.get(o, f"{o} not supported") for o in missing)


_INVISIBLE_TEXT = "is empty or whitespace (or only control and format characters)"


def _visible(text: str) -> bool:
    """Whether ``text`` has a character a model could read: a zero-width space, a NUL or a
    byte-order mark alone would all embed as the same empty text."""
    return any(
        not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf") for char in text
    )


def _pair_field(field: str | None, key: str, position: int) -> str:
    return key if field is None else f"{field}[{position}].{key}"


def sigmoid(logits: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """A cross-encoder's relevance probability, in [0, 1], from its logit."""
    wide = logits.astype(np.float64)
    probabilities: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-wide))
    return probabilities


def _normalize(matrix: DenseMatrix) -> DenseMatrix:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    normalized: DenseMatrix = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalized
