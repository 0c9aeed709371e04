"""The engine's public operations, each in three steps: validate, route, finish.

Every operation checks what a client could get wrong (``engine/validation.py``), sends
the work to the first backend of its chain that can take it (``engine/router.py``;
encoding through the cache, ``engine/cached_encoding.py``) and finishes what the backend
left raw (``engine/finishing.py``), the same way for every backend. Whether the backends
have started, and the health they report, is ``engine/health.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from engine import finishing
from engine.backend import Backend
from engine.budget import AnswerPool, Budget
from engine.cache import CacheStats
from engine.cached_encoding import CachedEncoder
from engine.errors import InvalidInput, Unavailable
from engine.health import EngineHealth, Readiness, check_models
from engine.m3_score import m3_scores
from engine.model_names import ModelNames
from engine.random_weights import random_weight_warnings
from engine.router import Router
from engine.settings import Settings
from engine.sparse_mapping import SparseMapper, SparseMapping
from engine.telemetry import Telemetry
from engine.tokenization import Tokenizer
from engine.types import (
    ColbertMatrix,
    DenseMatrix,
    EncodeOptions,
    HybridEmbeddings,
    M3Scores,
    ModelInfo,
    Operation,
    Output,
    PairScores,
    Ranking,
    Scores,
    SparseVector,
    Token,
)
from engine.validation import OptionFields, Validator

__all__ = ["InferenceEngine"]

log = logging.getLogger(__name__)

# Query groups of one score_pairs call sent to the backend at once.
_PAIR_GROUPS_IN_FLIGHT = 16


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
            embeds=bool(operations & {Operation.EMBED, Operation.LEXICAL_COLBERT}),
            reranks=Operation.RERANK in operations,
        )
        self.warnings = random_weight_warnings(settings)
        self._readiness = Readiness(self._router)
        self._mappers = finishing.SparseMappers(
            settings.sparse_token_mapping, settings.sparse_index_space
        )
        budget = Budget.from_settings(settings)
        self._checks = Validator(settings, self._router, budget)
        answers = self._answers = AnswerPool(settings.max_inflight_response_bytes)
        self._tokenizer = Tokenizer(self._router, self._readiness, self._checks, budget, answers)

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
            check_models(self._settings, self._router)
        except BaseException as exc:
            self._readiness.failed(exc, debugging=self._settings.log_level == "debug")
            raise
        self._readiness.started = True

    async def stop(self) -> None:
        for backend in self._router.backends:
            await backend.stop()
        await self._cache.close()

    def health(self) -> EngineHealth:
        return self._readiness.health()

    # -- models ----------------------------------------------------------------------

    @property
    def operations(self) -> frozenset[Operation]:
        return self._router.operations

    def sparse_index_space(self, mapping: SparseMapping | None = None) -> int:
        return self._mapper(mapping).index_space

    def model_info(self, operation: Operation) -> ModelInfo:
        """The model of the first backend in the chain that has one loaded (a remote that
        is down has none)."""
        self._readiness.check(operation)
        chain = self._router.chain(operation)
        for backend in chain:
            if backend.health().loaded:
                return backend.model_info(operation)
        return chain[0].model_info(operation)

    def served_model(self, operation: Operation, requested: str | None) -> str:
        """The served model's public name; raises ModelNotFound when ``requested`` names
        another (the 404 lists the names it accepts)."""
        return self._names.check(self.model_name(operation), requested, str(operation))

    def ranker(self, requested: str | None) -> tuple[str, Operation]:
        """Which model answers a rerank request that names ``requested``, and its public
        name: the reranker, or bge-m3 ranking by its own three-way score
        (``Operation.LEXICAL_COLBERT``) where ``requested`` names the embedding model and
        not the reranker (an alias both answer to stays the reranker's)."""
        names = self._names
        if (
            requested
            and requested in names.accepted(names.embedding)
            and requested not in names.accepted(names.reranker)
        ):
            if Operation.LEXICAL_COLBERT not in self._router.operations:
                raise Unavailable(
                    f"ranking by `{requested}` needs its sparse and ColBERT heads "
                    "(the lexical_colbert operation), which this deployment does not serve"
                )
            return names.embedding, Operation.LEXICAL_COLBERT
        return self.served_model(Operation.RERANK, requested), Operation.RERANK

    def model_name(self, operation: Operation) -> str:
        """The public name (EMBEDDING_SERVED_NAME / RERANKER_SERVED_NAME), never a path."""
        if operation not in self._router.operations:
            raise Unavailable(f"{operation.described} is not served by this deployment")
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
            frozenset({Output.LEXICAL}),
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
        colbert_max_tokens: int | None = None,
    ) -> HybridEmbeddings:
        """Any subset of dense / sparse / ColBERT for ``texts`` from one forward pass;
        ``mapping`` overrides SPARSE_TOKEN_MAPPING and ``truncate`` TRUNCATE for this call.
        ``normalize`` off: dense vectors as the model pools them (TEI's normalize false);
        ``truncate_left``: a text over the token limit keeps its end (TEI's Left).
        ``colbert_max_tokens``: each text's ColBERT rows pruned to the k of largest norm
        before normalisation, in order (a backend option, as ``normalize``).
        ``option_fields``: how the request asked for an option, where not as TEI does
        (a 422 for one no backend honours names it so)."""
        if not outputs:
            raise InvalidInput("ask for at least one of dense, sparse, colbert")
        operation = Operation.EMBED if outputs == {Output.DENSE} else Operation.LEXICAL_COLBERT
        self._readiness.check(operation)
        checks = self._checks
        checks.texts(texts, field)
        if dimensions is not None:
            checks.dimensions(self.model_info(operation), dimensions)
        truncating = self._settings.truncate if truncate is None else truncate
        # Only what changes the answer: without truncation no text is cut at either end.
        options = EncodeOptions(
            normalize=normalize or Output.DENSE not in outputs,
            truncate_left=truncate_left and truncating,
            colbert_max_tokens=colbert_max_tokens if Output.COLBERT in outputs else None,
        )
        checks.options(operation, options, option_fields)
        counts = None if truncating else await checks.token_counts(operation, texts, field)
        size = await checks.budget(
            self._loaded_info(operation),
            operation,
            texts,
            outputs,
            field=field,
            from_left=options.truncate_left,
            counts=counts,
        )
        with self._answers.reserved(size):
            encoding = await self._cache.routed(
                self._router, operation, texts, outputs, options, self._loaded_info(operation)
            )
        self._count(operation, len(texts), encoding.token_count)
        return finishing.embeddings(
            encoding,
            outputs,
            dimensions=dimensions,
            normalize=options.normalize,
            mapper=self._mapper(mapping) if encoding.lexical is not None else None,
        )

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        max_tokens_per_doc: int | None = None,
        by: Operation = Operation.RERANK,
    ) -> Ranking:
        """Documents scored against ``query``, best first, cut to ``top_n``; each document
        first cut to ``max_tokens_per_doc`` tokens (Cohere v2's field). ``by``
        LEXICAL_COLBERT (``ranker``): bge-m3's weighted sum of its three scores with
        FlagEmbedding's default weights (``m3_score``'s ``colbert+sparse+dense``), no
        cross-encoder pass."""
        self._readiness.check(by)
        self._checks.rerank(query, documents, top_n, max_tokens_per_doc)
        if by is Operation.LEXICAL_COLBERT:
            if max_tokens_per_doc is not None:
                documents = await self.cut_to_tokens(
                    documents, max_tokens_per_doc, field="documents"
                )
            return finishing.m3_ranking(await self.m3_score(query, documents), top_n)
        if max_tokens_per_doc is not None:
            documents = await self._cut_documents(documents, max_tokens_per_doc)
        await self._checks.rerank_budget(
            self._loaded_info(Operation.RERANK), documents, lambda: self._token_count(query)
        )
        scores = await self._router.call(Operation.RERANK, lambda b: b.score(query, documents))
        self._count(Operation.RERANK, len(documents), scores.token_count)
        return finishing.ranking(scores, top_n)

    async def m3_score(
        self, query: str, documents: Sequence[str], *, weights: Sequence[float] | None = None
    ) -> M3Scores:
        """bge-m3's own scores of ``documents`` against ``query``, in input order: dense,
        sparse, ColBERT and their weighted means, as FlagEmbedding's
        ``BGEM3FlagModel.compute_score`` (``engine/m3_score.py``); ``weights`` (dense,
        sparse, ColBERT) default to FlagEmbedding's README's 0.4, 0.2, 0.4."""
        self._readiness.check(Operation.LEXICAL_COLBERT)
        checked = self._checks.m3_score(query, documents, weights)
        # Token-id space: the lexical score matches token ids, which hashing could merge.
        asked, passages = await asyncio.gather(
            self.embed_hybrid([query], frozenset(Output), mapping="tokenizer", field="query"),
            self.embed_hybrid(documents, frozenset(Output), mapping="tokenizer", field="documents"),
        )
        assert asked.dense is not None and asked.sparse is not None and asked.colbert is not None
        assert passages.dense is not None and passages.sparse is not None
        assert passages.colbert is not None
        return m3_scores(
            (asked.dense[0], asked.sparse[0], asked.colbert[0]),
            (passages.dense, passages.sparse, passages.colbert),
            checked,
            asked.prompt_tokens + passages.prompt_tokens,
        )

    async def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, field: str | None = "pairs"
    ) -> PairScores:
        """Logits of (query, passage) pairs in input order, with their probabilities. Pairs
        that share a query go to the backend together, and the groups go at once, so the
        micro-batcher runs them in shared passes rather than one pass per pair. ``field``
        names the pairs in errors (``pairs[3].query``); None: one pair whose fields are
        ``query`` and ``passage``."""
        self._readiness.check(Operation.RERANK)
        self._checks.pairs(pairs, field)
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
        scores = finishing.pair_scores(len(pairs), groups.values(), answers)
        self._count(Operation.RERANK, len(pairs), scores.token_count)
        return scores

    async def cut_to_tokens(
        self, texts: Sequence[str], max_tokens: int, *, from_start: bool = False, field: str
    ) -> list[str]:
        """Each text cut to its first (``from_start``: last) ``max_tokens`` tokens, special
        tokens not counted, by the embedding tokenizer, never differently from a cut of
        the whole text (``Tokenizer.cut_to_tokens``)."""
        return await self._tokenizer.cut_to_tokens(
            texts, max_tokens, from_start=from_start, field=field
        )

    async def tokens(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, field: str = "inputs"
    ) -> tuple[tuple[Token, ...], ...]:
        """Each text's tokens, ids, text and byte offsets (the embedding tokenizer); 413
        past MAX_REQUEST_TOKENS or MAX_RESPONSE_BYTES."""
        return await self._tokenizer.tokens(
            texts, add_special_tokens=add_special_tokens, field=field
        )

    async def decode(
        self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool = True
    ) -> tuple[str, ...]:
        return await self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    async def tokenize(
        self, texts: Sequence[str], *, field: str = "input"
    ) -> tuple[list[int], ...]:
        return await self._tokenizer.tokenize(texts, field=field)

    # -- internals -------------------------------------------------------------------

    async def _cut_documents(self, documents: Sequence[str], limit: int) -> Sequence[str]:
        if limit >= self.model_info(Operation.RERANK).max_tokens:
            return documents  # the reranker cuts pairs to its own limit anyway
        # Counted by the embedding tokenizer: bge-m3 and bge-reranker-v2-m3 share XLM-R's.
        return await self.cut_to_tokens(documents, limit, field="documents")

    async def _token_count(self, query: str) -> int:
        return len((await self._tokenizer.tokenize([query], field="query"))[0])

    def _loaded_info(self, operation: Operation) -> ModelInfo | None:
        """``model_info``, or None where no backend has a model to say it yet."""
        try:
            return self.model_info(operation)
        except Unavailable:
            return None

    def _count(self, operation: Operation, items: int, tokens: int) -> None:
        self.telemetry.items[operation] += items
        self.telemetry.tokens[operation] += tokens

    def _mapper(self, mapping: SparseMapping | None) -> SparseMapper:
        if Operation.LEXICAL_COLBERT not in self._router.operations:
            raise Unavailable("sparse vectors are not served by this deployment")
        return self._mappers.get(
            mapping, lambda: self.model_info(Operation.LEXICAL_COLBERT).vocab_size
        )
