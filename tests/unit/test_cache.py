"""The embedding cache in the engine: per text, byte-equal, bounded."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from engine import InferenceEngine, Operation, Settings
from engine.cache import (
    CacheStats,
    EntryBounds,
    InvalidEntry,
    LruStore,
    check_entry,
    decode_entry,
    encode_entry,
    entry_key,
)
from engine.cached_encoding import CachedModel
from engine.errors import Unavailable
from engine.types import Encoding, ModelInfo, Output, TokenWeights
from tests.fake_backend import DIM, FakeBackend

HYBRID = frozenset({Output.DENSE, Output.LEXICAL, Output.COLBERT})


class CountingTokens(FakeBackend):
    """The fake, reporting each text's token count (as the flag backend does) and what
    it was asked to compute."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[str]] = []

    async def encode(self, texts: Sequence[str], outputs: frozenset[Output]) -> Encoding:
        self.asked.append(list(texts))
        encoding = await super().encode(texts, outputs)
        colbert = tuple(np.full((len(t.split()) + 1, DIM), len(t), dtype=np.float32) for t in texts)
        return Encoding(
            token_count=encoding.token_count,
            dense=encoding.dense,
            lexical=encoding.lexical,
            colbert=colbert,
            text_tokens=tuple(len(t.split()) + 2 for t in texts),
        )


def engine_with(backend: FakeBackend, **settings: object) -> InferenceEngine:
    engine = InferenceEngine(Settings(**settings), {op: [backend] for op in Operation})  # type: ignore[arg-type]
    asyncio.run(engine.start())
    return engine


def test_one_new_text_among_known_ones_computes_one() -> None:
    backend = CountingTokens()
    engine = engine_with(backend)
    first = asyncio.run(engine.embed_hybrid(["a b", "c", "d e f"], HYBRID))
    again = asyncio.run(engine.embed_hybrid(["c", "new one", "a b", "d e f"], HYBRID))
    assert backend.asked == [["a b", "c", "d e f"], ["new one"]]
    assert first.dense is not None and again.dense is not None
    assert again.dense[0].tobytes() == first.dense[1].tobytes()
    assert again.dense[2].tobytes() == first.dense[0].tobytes()
    assert first.colbert is not None and again.colbert is not None
    assert again.colbert[3].tobytes() == first.colbert[2].tobytes()
    assert first.sparse is not None and again.sparse is not None
    assert again.sparse[0].indices.tolist() == first.sparse[1].indices.tolist()
    # Usage counts every text, cached or not: 3 + 4 + 4 + 5 tokens.
    assert again.prompt_tokens == 16
    assert (engine.cache_stats.hits, engine.cache_stats.misses) == (3, 4)


def test_dense_only_entries_do_not_answer_a_hybrid_request() -> None:
    backend = CountingTokens()
    engine = engine_with(backend)
    asyncio.run(engine.embed_dense(["a b"]))
    asyncio.run(engine.embed_hybrid(["a b"], frozenset({Output.DENSE, Output.LEXICAL})))
    asyncio.run(engine.embed_hybrid(["a b"], frozenset({Output.LEXICAL})))
    assert backend.asked == [["a b"], ["a b"]]


def test_texts_are_not_stored_when_the_backend_cannot_split_the_token_count() -> None:
    backend = FakeBackend()  # token_count only, for the whole batch
    engine = engine_with(backend)
    asyncio.run(engine.embed_dense(["a", "b"]))
    asyncio.run(engine.embed_dense(["a", "b"]))
    assert backend.calls == 2
    asyncio.run(engine.embed_dense(["c"]))  # one text: its count is the batch's
    asyncio.run(engine.embed_dense(["c"]))
    assert backend.calls == 3


def test_zero_items_disables_the_cache() -> None:
    backend = CountingTokens()
    engine = engine_with(backend, cache_max_items=0)
    asyncio.run(engine.embed_dense(["a"]))
    asyncio.run(engine.embed_dense(["a"]))
    assert len(backend.asked) == 2


def test_lru_evicts_the_least_recently_used_by_items_and_bytes() -> None:
    stats = CacheStats()
    store = LruStore(max_items=2, max_bytes=1000, stats=stats)

    async def run() -> list[bytes | None]:
        await store.set_many([("a", b"1"), ("b", b"2")])
        await store.get_many(["a"])  # a is now the most recently used
        await store.set_many([("c", b"3")])
        await store.set_many([("big", b"x" * 2000)])  # larger than the cache: not kept
        await store.set_many([("d", b"y" * 998)])  # 1 + 1 + 998 bytes: fits, but 3 items
        return await store.get_many(["a", "b", "c", "d", "big"])

    # b went for the item bound (a had been used since), a for the same when d came.
    assert asyncio.run(run()) == [None, None, b"3", b"y" * 998, None]
    assert stats.evictions == 2

    async def over_bytes() -> list[bytes | None]:
        await store.set_many([("e", b"z" * 5)])  # c + d + e: 1004 bytes > 1000
        return await store.get_many(["c", "d", "e"])

    assert asyncio.run(over_bytes()) == [None, None, b"z" * 5]


@pytest.mark.parametrize("head", [Output.DENSE, Output.LEXICAL, Output.COLBERT])
def test_entries_round_trip_exactly(head: Output) -> None:
    rng = np.random.default_rng(0)
    value: object
    if head is Output.DENSE:
        value = rng.standard_normal(1024).astype(np.float32)
    elif head is Output.LEXICAL:
        value = TokenWeights(
            np.array([5, 70_000, 250_001], dtype=np.int64),
            rng.random(3).astype(np.float32),
        )
    else:
        value = rng.standard_normal((37, 1024)).astype(np.float32)
    data = encode_entry(head, 42, value)
    decoded_head, (tokens, decoded) = decode_entry(data)
    assert (decoded_head, tokens) == (head, 42)
    if isinstance(value, TokenWeights):
        assert isinstance(decoded, TokenWeights)
        assert decoded.token_ids.tolist() == value.token_ids.tolist()
        assert decoded.weights.tobytes() == value.weights.tobytes()
    else:
        assert isinstance(decoded, np.ndarray)
        assert decoded.tobytes() == np.asarray(value).tobytes()
        assert decoded.shape == np.asarray(value).shape
    # Compact: the arrays' bytes plus a few header bytes, not JSON.
    assert len(data) < np.asarray(getattr(value, "weights", value)).nbytes * 3 + 64


# -- entries checked on read -------------------------------------------------------------

BOUNDS = EntryBounds(dimension=4, vocab_size=100, max_tokens=16)
UNIT = np.full(4, 0.5, np.float32)


def checked(head: Output, data: bytes) -> object:
    return check_entry(head, decode_entry(data), BOUNDS)


def test_an_entry_the_model_could_have_computed_passes() -> None:
    tokens, dense = checked(Output.DENSE, encode_entry(Output.DENSE, 5, UNIT))  # type: ignore[misc]
    assert tokens == 5 and dense.tolist() == UNIT.tolist()
    weights = TokenWeights(np.array([0, 99]), np.array([0.5, 1.5], np.float32))
    checked(Output.LEXICAL, encode_entry(Output.LEXICAL, 16, weights))
    checked(Output.COLBERT, encode_entry(Output.COLBERT, 5, np.tile(UNIT, (4, 1))))


@pytest.mark.parametrize(
    ("head", "data", "kind"),
    [
        (Output.DENSE, b"", "undecodable"),
        (Output.DENSE, b"\x05\x00\x00\x00\x07", "undecodable"),  # head 7 of 3
        (Output.DENSE, encode_entry(Output.DENSE, 5, UNIT)[:-1], "undecodable"),
        (
            Output.LEXICAL,
            encode_entry(Output.LEXICAL, 5, TokenWeights(np.array([1]), np.ones(1)))[:-2],
            "undecodable",
        ),
        (Output.COLBERT, encode_entry(Output.COLBERT, 5, np.ones((4, 4))) + b"\x00", "undecodable"),
        (
            Output.DENSE,
            encode_entry(Output.LEXICAL, 5, TokenWeights(np.array([1]), np.ones(1))),
            "head",
        ),
        (Output.DENSE, encode_entry(Output.DENSE, 0, UNIT), "token count"),
        (Output.DENSE, encode_entry(Output.DENSE, 17, UNIT), "token count"),
        (Output.DENSE, encode_entry(Output.DENSE, 4_000_000_000, UNIT), "token count"),
        (Output.DENSE, encode_entry(Output.DENSE, 5, UNIT[:3]), "dimension"),
        (Output.DENSE, encode_entry(Output.DENSE, 5, np.ones(10**6)), "dimension"),
        (Output.DENSE, encode_entry(Output.DENSE, 5, [0.5, np.nan, 0.5, 0.5]), "not finite"),
        (Output.DENSE, encode_entry(Output.DENSE, 5, [0.5, np.inf, 0.5, 0.5]), "not finite"),
        (
            Output.LEXICAL,
            encode_entry(Output.LEXICAL, 5, TokenWeights(np.array([-1]), np.ones(1))),
            "token id",
        ),
        (
            Output.LEXICAL,
            encode_entry(Output.LEXICAL, 5, TokenWeights(np.array([100]), np.ones(1))),
            "token id",
        ),
        (
            Output.LEXICAL,
            encode_entry(Output.LEXICAL, 5, TokenWeights(np.array([3, 3]), np.ones(2))),
            "token id",
        ),
        (
            Output.LEXICAL,
            encode_entry(Output.LEXICAL, 2, TokenWeights(np.arange(3), np.ones(3))),
            "token id",
        ),
        (
            Output.LEXICAL,
            encode_entry(Output.LEXICAL, 5, TokenWeights(np.array([3]), np.zeros(1))),
            "lexical weights",
        ),
        (
            Output.LEXICAL,
            encode_entry(Output.LEXICAL, 5, TokenWeights(np.array([3]), np.array([np.nan]))),
            "lexical weights",
        ),
        (Output.COLBERT, encode_entry(Output.COLBERT, 5, np.ones((20_000, 4))), "ColBERT rows"),
        (Output.COLBERT, encode_entry(Output.COLBERT, 5, np.ones((5, 4))), "ColBERT rows"),
        (Output.COLBERT, encode_entry(Output.COLBERT, 5, np.ones((4, 3))), "dimension"),
        (Output.COLBERT, encode_entry(Output.COLBERT, 5, np.full((4, 4), np.nan)), "not finite"),
    ],
)
def test_an_entry_that_does_not_fit_the_model_is_refused(
    head: Output, data: bytes, kind: str
) -> None:
    with pytest.raises(InvalidEntry) as refused:
        checked(head, data)
    assert refused.value.kind == kind


def test_random_bytes_are_refused_never_raised_otherwise() -> None:
    rng = np.random.default_rng(7)
    valid = [
        encode_entry(Output.DENSE, 5, UNIT),
        encode_entry(Output.LEXICAL, 5, TokenWeights(np.array([1, 2]), np.ones(2))),
        encode_entry(Output.COLBERT, 5, np.tile(UNIT, (4, 1))),
    ]
    for _ in range(3000):
        base = valid[int(rng.integers(3))]
        data = bytearray(base[: int(rng.integers(len(base) + 1))])
        for _ in range(int(rng.integers(3))):  # flip bytes, the sizes in the header too
            if data:
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
        for head in (Output.DENSE, Output.LEXICAL, Output.COLBERT):
            with contextlib.suppress(InvalidEntry):
                checked(head, bytes(data))


class Loaded(CountingTokens):
    def __init__(self, name: str, fingerprint: str) -> None:
        super().__init__()
        self._name, self._fingerprint = name, fingerprint

    @property
    def name(self) -> str:
        return self._name

    def model_info(self, operation: Operation) -> ModelInfo:
        info = super().model_info(operation)
        if not self._fingerprint:
            raise Unavailable("not reached yet")
        return dataclasses.replace(info, fingerprint=self._fingerprint)


def test_a_chain_is_keyed_by_each_backend_in_order() -> None:
    info = ModelInfo("BAAI/bge-m3", 16, 100, dimension=DIM)

    def key(*chain: Loaded) -> str:
        model = CachedModel.of(info, chain, Operation.EMBED)  # type: ignore[arg-type]
        assert model.bounds == EntryBounds(DIM, 100, 16)
        return entry_key(model.fingerprint, Output.DENSE, 16, "text")

    remote, flag = Loaded("remote", "r1"), Loaded("flag", "f1")
    keys = {
        key(flag),
        key(Loaded("flag", "f2")),  # other weights under the same name
        key(remote, flag),
        key(flag, remote),
        key(Loaded("remote", ""), flag),  # the remote not reached yet
    }
    assert len(keys) == 5
    assert key(Loaded("flag", "f1")) == key(flag)  # the same weights elsewhere
