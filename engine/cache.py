"""The embedding cache: per text and per head, so a request with one new text among 31
known ones computes one.

An entry is one text's raw output of one head (dense vector, lexical weights or
ColBERT matrix) with the text's token count, stored as compact bytes (float32 and
int32 arrays, not JSON) under a key that hashes everything the output depends on:
the model's fingerprint (its weights and the settings that change its answers, not its
configured name: ``backends/fingerprint.py``), head, token limit, the text, and the
EncodeOptions that change the head's output (an unnormalised vector is never served for
a normalised one). What the engine finishes afterwards (sparse index mapping, dimension
truncation) is done on cached and computed rows alike, so a cached answer is byte-equal
to the computed one.

A store is not trusted: every entry read is checked against the model (``check_entry``)
and one that does not fit — undecodable, another head, another dimension, values that
are not finite, token ids outside the vocabulary, weights not > 0, ColBERT rows that
are not the text's tokens, a token count outside the limit — is a miss
(``InvalidEntry``).

Two stores: an in-process LRU bounded by entries and bytes (``CACHE_MAX_ITEMS``,
``CACHE_MAX_MB``), and Redis (``REDIS_URL``, entries expire after ``CACHE_TTL_S``),
shared by replicas. A Redis that is down or dies costs cache hits, never answers:
the service serves uncached, logs it once, and tries again a few seconds later.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engine.types import DEFAULT_OPTIONS, ColbertMatrix, EncodeOptions, Output, TokenWeights

__all__ = [
    "CacheStats",
    "Entry",
    "EntryBounds",
    "InvalidEntry",
    "LruStore",
    "RedisStore",
    "Store",
    "check_entry",
    "decode_entry",
    "encode_entry",
    "entry_key",
    "head_variant",
]

log = logging.getLogger(__name__)

Entry = tuple[int, np.ndarray[Any, Any] | TokenWeights | ColbertMatrix]
"""(the text's token count, the head's output for it)."""

_HEADER = struct.Struct("<IB")  # token count, head
_SHAPE = struct.Struct("<II")
_HEADS = (Output.DENSE, Output.LEXICAL, Output.COLBERT)
# After a Redis failure, how long the service runs uncached before it asks Redis again.
_REDIS_RETRY_S = 5.0


def entry_key(
    model: str, head: Output, max_tokens: int, text: str, options: EncodeOptions = DEFAULT_OPTIONS
) -> str:
    """``model`` is the fingerprint of what computes the entry, never a configured name:
    two services with other weights under one name must not meet. Raw and normalised
    vectors, and a text cut at its start or at its end, get keys of their own."""
    variant = head_variant(head, options)
    label = f"{head}{variant}"
    digest = hashlib.sha256(f"{model}\0{label}\0{max_tokens}\0{text}".encode()).hexdigest()
    return f"bge:{label}:{digest}"


def head_variant(head: Output, options: EncodeOptions) -> str:
    """What ``options`` change in ``head``'s output, as a key suffix ("" for nothing)."""
    variant = "-raw" if head is Output.DENSE and not options.normalize else ""
    return variant + ("-left" if options.truncate_left else "")


class InvalidEntry(ValueError):
    """An entry that is not what the model computes; ``kind`` names the check it failed
    (what is logged once per kind), the message says how."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class EntryBounds:
    """What the serving model's entries must fit; 0 where a remote does not say."""

    dimension: int
    vocab_size: int
    max_tokens: int


def encode_entry(head: Output, tokens: int, value: Any) -> bytes:
    header = _HEADER.pack(tokens, _HEADS.index(head))
    if head is Output.DENSE:
        return header + np.asarray(value, dtype="<f4").tobytes()
    if head is Output.LEXICAL:
        ids = np.asarray(value.token_ids, dtype="<i4")
        weights = np.asarray(value.weights, dtype="<f4")
        return header + struct.pack("<I", len(ids)) + ids.tobytes() + weights.tobytes()
    matrix = np.asarray(value, dtype="<f4")
    return header + _SHAPE.pack(*matrix.shape) + matrix.tobytes()


def decode_entry(data: bytes) -> tuple[Output, Entry]:
    """The head and entry ``data`` holds; InvalidEntry("undecodable") for bytes that are
    not one whole entry (too short, an unknown head, sizes that disagree, bytes left over)."""
    if len(data) < _HEADER.size:
        raise InvalidEntry("undecodable", f"{len(data)} bytes, shorter than a header")
    tokens, head_index = _HEADER.unpack_from(data)
    if head_index >= len(_HEADS):
        raise InvalidEntry("undecodable", f"head {head_index} is none of {len(_HEADS)}")
    head = _HEADS[head_index]
    body = memoryview(data)[_HEADER.size :]
    if head is Output.DENSE:
        _expect_size(body, len(body) - len(body) % 4)
        return head, (tokens, np.frombuffer(body, dtype="<f4").astype(np.float32))
    if head is Output.LEXICAL:
        _expect_size(body, 4, at_least=True)
        (count,) = struct.unpack_from("<I", body)
        _expect_size(body, 4 + 8 * count)
        ids = np.frombuffer(body, dtype="<i4", count=count, offset=4).astype(np.int64)
        weights = np.frombuffer(body, dtype="<f4", count=count, offset=4 + 4 * count)
        return head, (tokens, TokenWeights(ids, weights.astype(np.float32)))
    _expect_size(body, _SHAPE.size, at_least=True)
    rows, dim = _SHAPE.unpack_from(body)
    _expect_size(body, _SHAPE.size + 4 * rows * dim)
    matrix = np.frombuffer(body, dtype="<f4", offset=_SHAPE.size).reshape(rows, dim)
    return head, (tokens, matrix.astype(np.float32))


def _expect_size(body: memoryview, size: int, *, at_least: bool = False) -> None:
    if len(body) < size or (len(body) > size and not at_least):
        raise InvalidEntry("undecodable", f"a body of {len(body)} bytes where {size} fit")


def check_entry(head: Output, decoded: tuple[Output, Entry], bounds: EntryBounds) -> Entry:
    """``decoded``'s entry when it is one the model could have computed for ``head``;
    else InvalidEntry naming the first check it fails."""
    found, (tokens, value) = decoded
    if found is not head:
        raise InvalidEntry("head", f"a {found} entry under a {head} key")
    if tokens < 1 or (bounds.max_tokens and tokens > bounds.max_tokens):
        raise InvalidEntry(
            "token count", f"{tokens} tokens, outside 1-{bounds.max_tokens or 'unbounded'}"
        )
    if isinstance(value, TokenWeights):
        _check_weights(value, tokens, bounds)
        return tokens, value
    if head is Output.COLBERT and value.shape[0] != tokens - 1:
        # One row per token after CLS (ColbertMatrix), so a text's rows follow its count.
        raise InvalidEntry("ColBERT rows", f"{value.shape[0]} rows for a text of {tokens} tokens")
    width = value.shape[-1] if value.ndim else 0
    if bounds.dimension and width != bounds.dimension:
        raise InvalidEntry(
            "dimension", f"{width}-dimensional {head} vectors; the model's have {bounds.dimension}"
        )
    if not np.isfinite(value).all():
        raise InvalidEntry("not finite", f"NaN or infinite values in a {head} entry")
    return tokens, value


def _check_weights(value: TokenWeights, tokens: int, bounds: EntryBounds) -> None:
    ids, weights = value.token_ids, value.weights
    if len(ids) and (ids.min() < 0 or (bounds.vocab_size and ids.max() >= bounds.vocab_size)):
        raise InvalidEntry(
            "token id",
            f"ids {ids.min()}-{ids.max()}, outside the vocabulary's 0-"
            f"{bounds.vocab_size - 1 if bounds.vocab_size else 'unbounded'}",
        )
    if len(np.unique(ids)) != len(ids) or len(ids) > tokens:
        raise InvalidEntry("token id", f"{len(ids)} ids, repeated or more than {tokens} tokens")
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise InvalidEntry("lexical weights", "weights that are not all finite and > 0")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0  # texts answered from the cache
    misses: int = 0  # texts computed
    evictions: int = 0  # LRU entries pushed out
    errors: int = 0  # Redis calls that failed
    invalid: int = 0  # entries read that did not fit the model: treated as misses


class Store(Protocol):
    name: str

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...

    async def close(self) -> None: ...


class LruStore:
    name = "memory"

    def __init__(self, max_items: int, max_bytes: int, stats: CacheStats) -> None:
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._bytes = 0
        self._stats = stats

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found: list[bytes | None] = []
        for key in keys:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            found.append(value)
        return found

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for key, value in items:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            if len(value) > self._max_bytes:
                continue  # larger than the whole cache: not worth evicting everything
            self._entries[key] = value
            self._bytes += len(value)
        while len(self._entries) > self._max_items or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)
            self._stats.evictions += 1

    async def close(self) -> None:
        self._entries.clear()


class RedisStore:
    name = "redis"

    def __init__(self, url: str, ttl_s: int, stats: CacheStats) -> None:
        from redis.asyncio import Redis

        # Short timeouts: a Redis that hangs must cost a request milliseconds, not seconds.
        self._redis = Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, retry_on_timeout=False
        )
        self._url = url
        self._ttl_s = ttl_s
        self._stats = stats
        self._down_until: float | None = None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if self._resting():
            return [None] * len(keys)
        try:
            values = await self._redis.mget(list(keys))
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "uncached", not 5xx
            self._failed(exc)
            return [None] * len(keys)
        self._recovered()
        # Bytes, as this store wrote them (the client does not decode responses).
        return [value if isinstance(value, bytes) else None for value in values]

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items or self._resting():
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(key, value, ex=self._ttl_s)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return
        self._recovered()

    async def close(self) -> None:
        await self._redis.aclose()

    def _resting(self) -> bool:
        return self._down_until is not None and time.monotonic() < self._down_until

    def _failed(self, exc: Exception) -> None:
        self._stats.errors += 1
        if self._down_until is None:  # once per outage, not once per request
            log.warning(
                "cache: Redis is unreachable (%s); serving uncached, retrying every %g s",
                type(exc).__name__,
                _REDIS_RETRY_S,
            )
        self._down_until = time.monotonic() + _REDIS_RETRY_S

    def _recovered(self) -> None:
        if self._down_until is not None:
            log.warning("cache: Redis answers again; caching resumed")
            self._down_until = None
