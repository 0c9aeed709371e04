"""The cache read-through in front of the backends: a request's texts whose every asked
head is cached are answered from the store, the rest computed in one call and stored.

Kept apart from the engine's validation and finishing (``engine/inference.py``), as
Infinity keeps ``caching_layer.py`` apart from its batch handler: what an entry is and
how it is keyed and checked lives in ``engine/cache.py``; here only which texts hit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from engine.cache import (
    CacheStats,
    Entry,
    LruStore,
    RedisStore,
    Store,
    decode_entry,
    encode_entry,
    entry_key,
)
from engine.settings import Settings
from engine.types import EncodeOptions, Encoding, Output

__all__ = ["CachedEncoder", "Compute"]

Compute = Callable[[Sequence[str]], Awaitable[Encoding]]
"""The backends' encoding of some texts (the outputs and options already bound)."""

_HEADS = (Output.DENSE, Output.SPARSE, Output.COLBERT)


class CachedEncoder:
    """The cache store the settings name (none, in-process LRU or Redis) and its read-through."""

    def __init__(self, settings: Settings, stats: CacheStats) -> None:
        self._model = settings.embedding_model_name
        self._store = _cache_store(settings, stats)
        self._stats = stats

    @property
    def store_name(self) -> str:
        """Where embeddings are cached: memory, redis, or none."""
        return self._store.name if self._store is not None else "none"

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
        max_tokens: int,
        compute: Compute,
    ) -> Encoding:
        """``compute``'s encoding of ``texts``, from the cache for every text it holds all
        asked heads of; the rest computed in one call, and stored where the backend says
        how many tokens each text took."""
        store = self._store
        if store is None:
            return await compute(texts)
        heads = [head for head in _HEADS if head in outputs]
        keys = [
            [entry_key(self._model, head, max_tokens, text, options) for head in heads]
            for text in texts
        ]
        found = await store.get_many([key for row in keys for key in row])
        cached: dict[int, dict[Output, Entry]] = {}
        for position in range(len(texts)):
            values = found[position * len(heads) : (position + 1) * len(heads)]
            if all(value is not None for value in values):
                cached[position] = dict(decode_entry(v) for v in values if v is not None)
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
    if head is Output.SPARSE:
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
        lexical=tuple(row[Output.SPARSE] for row in rows) if Output.SPARSE in heads else None,
        colbert=tuple(row[Output.COLBERT] for row in rows) if Output.COLBERT in heads else None,
    )
