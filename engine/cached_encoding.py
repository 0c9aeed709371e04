"""The cache read-through around the router's encode call: a request's texts whose every
asked head is cached are answered from the store, the rest computed in one routed call
and stored.

Kept apart from the engine's operations (``engine/inference.py``), as Infinity keeps
``caching_layer.py`` apart from its batch handler: what an entry is and how it is keyed
and checked lives in ``engine/cache.py``; here which texts hit, under which model, what
is done with an entry that does not fit it (a miss, logged once per kind of problem,
overwritten by the computation), and the call that computes the rest: the first backend
of the chain that honours the request's options.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.backend import Backend
from engine.cache import (
    CacheStats,
    Entry,
    EntryBounds,
    InvalidEntry,
    LruStore,
    RedisStore,
    Store,
    check_entry,
    decode_entry,
    encode_entry,
    entry_key,
)
from engine.errors import Unavailable
from engine.router import Router
from engine.settings import Settings
from engine.types import DEFAULT_OPTIONS, EncodeOptions, Encoding, ModelInfo, Operation, Output
from engine.validation import departures, refusal

__all__ = ["CachedEncoder", "CachedModel", "Compute", "routed_encoding"]

log = logging.getLogger(__name__)

Compute = Callable[[Sequence[str]], Awaitable[Encoding]]
"""The backends' encoding of some texts (the outputs and options already bound)."""

_HEADS = (Output.DENSE, Output.LEXICAL, Output.COLBERT)


@dataclass(frozen=True, slots=True)
class CachedModel:
    """The model an operation is served with, as the cache sees it: what its entries are
    keyed by and what they must fit."""

    fingerprint: str
    bounds: EntryBounds

    @classmethod
    def of(cls, info: ModelInfo, chain: Sequence[Backend], operation: Operation) -> CachedModel:
        """``info`` is the model the engine serves ``operation`` with (its limit, dimension
        and vocabulary bound the entries); the fingerprint is the whole chain's, in order:
        its entries are its answers, whichever of its backends computed one, as its
        responses are. A backend not loaded yet (a remote not reached) counts as such, so
        the entries computed meanwhile are apart from those once it is."""
        parts = []
        for backend in chain:
            try:
                served = backend.model_info(operation)
            except Unavailable:
                parts.append(f"{backend.name} (not loaded)")
                continue
            # A backend that cannot say (the tests' fakes) keys by its name and model's.
            parts.append(served.fingerprint or f"{backend.name} {served.name}")
        bounds = EntryBounds(
            dimension=info.dimension or 0,
            vocab_size=info.vocab_size,
            max_tokens=info.max_tokens,
        )
        return cls("\0".join(parts), bounds)


class CachedEncoder:
    """The cache store the settings name (none, in-process LRU or Redis) and its read-through."""

    def __init__(self, settings: Settings, stats: CacheStats) -> None:
        self._store = _cache_store(settings, stats)
        self._stats = stats
        self._logged: set[str] = set()  # the kinds of invalid entries logged already

    @property
    def store_name(self) -> str:
        """Where embeddings are cached: memory, redis, or none."""
        return self._store.name if self._store is not None else "none"

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()

    async def routed(
        self,
        router: Router,
        operation: Operation,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
        info: ModelInfo | None,
    ) -> Encoding:
        """``texts`` encoded by ``router``'s chain for ``operation``, read through the cache
        under ``info``, the model the engine serves it with. ``info`` None: no backend has a
        model yet (a remote not reached), nothing to key entries by, and the router's
        answer (a fallback, or 503 with Retry-After) is the one."""
        compute = routed_encoding(router, operation, outputs, options)
        # Pruned ColBERT rows are not cached: the norms that chose them are not stored.
        if info is None or options.colbert_max_tokens is not None:
            return await compute(texts)
        model = CachedModel.of(info, router.chain(operation), operation)
        return await self.encode(texts, outputs, options, model, compute)

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
        model: CachedModel,
        compute: Compute,
    ) -> Encoding:
        """``compute``'s encoding of ``texts``, from the cache for every text it holds all
        asked heads of, each fitting ``model``; the rest computed in one call, and stored
        (over any entry that did not fit) where the backend says how many tokens each
        text took."""
        store = self._store
        if store is None:
            return await compute(texts)
        heads = [head for head in _HEADS if head in outputs]
        limit = model.bounds.max_tokens
        keys = [
            [entry_key(model.fingerprint, head, limit, text, options) for head in heads]
            for text in texts
        ]
        found = await store.get_many([key for row in keys for key in row])
        cached: dict[int, dict[Output, Entry]] = {}
        for position in range(len(texts)):
            values = found[position * len(heads) : (position + 1) * len(heads)]
            entries = self._checked(heads, values, keys[position], model.bounds)
            if entries is not None:
                cached[position] = entries
        missing = [position for position in range(len(texts)) if position not in cached]
        self._stats.hits += len(cached)
        self._stats.misses += len(missing)
        computed: Encoding | None = None
        if missing:
            asked = [texts[position] for position in missing]
            computed = await compute(asked)
            counts = computed.text_tokens
            if counts is None and len(asked) == 1:
                counts = (computed.token_count,)
            if counts is not None:
                await store.set_many(
                    [
                        (keys[position][h], encode_entry(head, count, _head(computed, head, i)))
                        for i, (position, count) in enumerate(zip(missing, counts, strict=True))
                        for h, head in enumerate(heads)
                    ]
                )
        if computed is not None and not cached:
            return computed
        return _merged(len(texts), heads, cached, missing, computed)

    def _checked(
        self,
        heads: Sequence[Output],
        values: Sequence[bytes | None],
        keys: Sequence[str],
        bounds: EntryBounds,
    ) -> dict[Output, Entry] | None:
        """One text's entries, when every head is stored and fits the model; else None
        (a miss)."""
        entries: dict[Output, Entry] = {}
        for head, value, key in zip(heads, values, keys, strict=True):
            if value is None:
                return None
            try:
                entries[head] = check_entry(head, decode_entry(value), bounds)
            except InvalidEntry as problem:
                self._invalid(key, problem)
                return None
        counts = sorted({tokens for tokens, _ in entries.values()})
        if len(counts) > 1:  # each head was stored with the text's one count
            self._invalid(keys[0], InvalidEntry("token count", f"heads disagree: {counts}"))
            return None
        return entries

    def _invalid(self, key: str, problem: InvalidEntry) -> None:
        """Counted always; logged once per kind, not once per request: a store full of
        another version's entries must not flood the log."""
        self._stats.invalid += 1
        if problem.kind in self._logged:
            return
        self._logged.add(problem.kind)
        log.warning(
            "cache: invalid cache entry (%s) under %s; served as a miss, overwritten by the "
            "computation; further entries of this kind are counted "
            "(bge_cache_invalid_total), not logged",
            problem,
            key,
        )


def routed_encoding(
    router: Router, operation: Operation, outputs: frozenset[Output], options: EncodeOptions
) -> Compute:
    """The encoding of some texts by the first backend of the chain that can; a backend
    that does not honour ``options`` is passed by, as one that is down."""
    if options == DEFAULT_OPTIONS:
        return lambda texts: router.call(operation, lambda b: b.encode(texts, outputs))
    wanted = departures(options)

    async def encoded(texts: Sequence[str], backend: Backend) -> Encoding:
        if not wanted <= backend.capabilities.options:
            raise Unavailable(f"the {backend.name} backend cannot: {refusal(backend, wanted)}")
        return await backend.encode(texts, outputs, options)

    return lambda texts: router.call(operation, functools.partial(encoded, texts))


def _cache_store(settings: Settings, stats: CacheStats) -> Store | None:
    if settings.redis_url:
        return RedisStore(settings.redis_url, settings.cache_ttl_s, stats)
    if settings.cache_max_items == 0:
        return None
    return LruStore(settings.cache_max_items, settings.cache_max_mb * 1024 * 1024, stats)


def _head(encoding: Encoding, head: Output, index: int) -> Any:
    if head is Output.DENSE:
        assert encoding.dense is not None
        return encoding.dense[index]
    if head is Output.LEXICAL:
        assert encoding.lexical is not None
        return encoding.lexical[index]
    assert encoding.colbert is not None
    return encoding.colbert[index]


def _merged(
    size: int,
    heads: Sequence[Output],
    cached: Mapping[int, Mapping[Output, Entry]],
    missing: Sequence[int],
    computed: Encoding | None,
) -> Encoding:
    """One Encoding in input order from cached entries and the computed rest."""
    rows: list[dict[Output, Any]] = [{} for _ in range(size)]
    tokens = 0
    for position, entries in cached.items():
        for head, (_, value) in entries.items():
            rows[position][head] = value
        tokens += next(iter(entries.values()))[0]  # every head of a text has its count
    if computed is not None:
        tokens += computed.token_count
        for i, position in enumerate(missing):
            for head in heads:
                rows[position][head] = _head(computed, head, i)
    return Encoding(
        token_count=tokens,
        dense=np.stack([row[Output.DENSE] for row in rows]).astype(np.float32)
        if Output.DENSE in heads
        else None,
        lexical=tuple(row[Output.LEXICAL] for row in rows) if Output.LEXICAL in heads else None,
        colbert=tuple(row[Output.COLBERT] for row in rows) if Output.COLBERT in heads else None,
    )
