"""normalize false and Left truncation in the engine: sent only to backends that declare
them, refused with a 422-kind error naming why when none of the chain can, and cached
apart from the default vectors."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from engine import Capabilities, Encoding, InferenceEngine, Operation, Output, Settings
from engine.backend import Backend
from engine.cache import entry_key
from engine.errors import InvalidInput
from engine.types import DEFAULT_OPTIONS, EncodeOptions
from tests.fake_backend import FakeBackend

TEXTS = ["a b", "c d e"]


class Optioned(FakeBackend):
    """The fake, honouring both options: raw rows are the unit rows scaled by 3, a text
    cut at its start has a row of its own; it records the options it was sent."""

    def __init__(self, name: str = "optioned") -> None:
        super().__init__()
        self._name = name
        self.sent: list[EncodeOptions] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(
            super().capabilities, options=frozenset({"normalize", "truncate_left"})
        )

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions = DEFAULT_OPTIONS,
    ) -> Encoding:
        self.sent.append(options)
        encoding = await super().encode(texts, outputs)
        assert encoding.dense is not None
        dense = encoding.dense * (1.0 if options.normalize else 3.0)
        if options.truncate_left:
            dense = dense[:, ::-1].copy()
        return dataclasses.replace(
            encoding, dense=dense, text_tokens=tuple(len(t.split()) + 2 for t in texts)
        )


class Refusing(FakeBackend):
    """A backend like the infinity one: neither option, with its reasons."""

    @property
    def name(self) -> str:
        return "refusing"

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(
            super().capabilities,
            refusals={"normalize": "it normalises always", "truncate_left": "it cuts the end"},
        )


def engine_of(*chain: Backend, **settings: object) -> InferenceEngine:
    chains = {op: list(chain) for op in (Operation.EMBED, Operation.LEXICAL_COLBERT)}
    engine = InferenceEngine(Settings(**settings), chains)  # type: ignore[arg-type]
    asyncio.run(engine.start())
    return engine


def test_defaults_are_sent_as_before() -> None:
    backend = Optioned()
    asyncio.run(engine_of(backend).embed_dense(TEXTS))
    assert backend.sent == [DEFAULT_OPTIONS]


def test_raw_vectors_come_back_unnormalised_and_cut_without_renormalising() -> None:
    backend = Optioned()
    engine = engine_of(backend, cache_max_items=0)
    unit, _ = asyncio.run(engine.embed_dense(TEXTS))
    raw, _ = asyncio.run(engine.embed_dense(TEXTS, normalize=False))
    np.testing.assert_allclose(raw, unit * 3)
    cut, _ = asyncio.run(engine.embed_dense(TEXTS, normalize=False, dimensions=3))
    np.testing.assert_allclose(cut, raw[:, :3])  # as TEI: cut, not renormalised
    cut_unit, _ = asyncio.run(engine.embed_dense(TEXTS, dimensions=3))
    np.testing.assert_allclose(np.linalg.norm(cut_unit, axis=1), 1.0, rtol=1e-6)
    assert backend.sent[1] == EncodeOptions(normalize=False)


def test_left_is_sent_only_when_the_request_truncates() -> None:
    backend = Optioned()
    engine = engine_of(backend, cache_max_items=0)
    asyncio.run(engine.embed_dense(TEXTS, truncate_left=True))
    asyncio.run(engine.embed_dense(TEXTS, truncate_left=True, truncate=False))
    # Truncation off: no text is cut at either end, so nothing departs from the default.
    assert backend.sent == [EncodeOptions(truncate_left=True), DEFAULT_OPTIONS]


@pytest.mark.parametrize(
    ("asked", "param", "reason"),
    [
        ({"normalize": False}, "normalize", "it normalises always"),
        ({"truncate_left": True}, "truncation_direction", "it cuts the end"),
    ],
)
def test_a_chain_that_cannot_refuses_naming_why(
    asked: dict[str, bool], param: str, reason: str
) -> None:
    refusing = Refusing()
    engine = engine_of(refusing)
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(engine.embed_dense(TEXTS, **asked))  # type: ignore[arg-type]
    assert caught.value.param == param
    assert "EMBED_BACKENDS" in caught.value.message and reason in caught.value.message
    assert refusing.calls == 0


def test_a_backend_that_cannot_is_passed_by_for_one_that_can() -> None:
    refusing, able = Refusing(), Optioned()
    engine = engine_of(refusing, able, cache_max_items=0)
    raw, _ = asyncio.run(engine.embed_dense(TEXTS, normalize=False))
    unit, _ = asyncio.run(engine.embed_dense(TEXTS))
    assert able.sent == [EncodeOptions(normalize=False)]
    assert refusing.calls == 1  # the default call went to the first backend
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 3.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


def test_raw_normalised_and_left_vectors_never_share_a_cache_entry() -> None:
    backend = Optioned()
    engine = engine_of(backend, cache_max_items=100)
    unit, _ = asyncio.run(engine.embed_dense(TEXTS))
    raw, _ = asyncio.run(engine.embed_dense(TEXTS, normalize=False))
    left, _ = asyncio.run(engine.embed_dense(TEXTS, truncate_left=True))
    assert len(backend.sent) == 3  # each computed: none answered from another's entry
    np.testing.assert_allclose(raw, unit * 3)
    np.testing.assert_allclose(left, unit[:, ::-1])
    again = [
        asyncio.run(engine.embed_dense(TEXTS, normalize=n, truncate_left=t))[0]
        for n, t in ((True, False), (False, False), (True, True))
    ]
    assert len(backend.sent) == 3  # now all three from the cache, each its own
    for cached, computed in zip(again, (unit, raw, left), strict=True):
        assert cached.tobytes() == computed.tobytes()


def test_default_cache_keys_are_unchanged() -> None:
    """Entries written before the options existed are still found."""
    key = entry_key("m", Output.DENSE, 512, "text")
    assert key == entry_key("m", Output.DENSE, 512, "text", DEFAULT_OPTIONS)
    raw = entry_key("m", Output.DENSE, 512, "text", EncodeOptions(normalize=False))
    left = entry_key("m", Output.LEXICAL, 512, "text", EncodeOptions(truncate_left=True))
    assert len({key, raw, left, entry_key("m", Output.LEXICAL, 512, "text")}) == 4
    # normalize changes nothing but dense vectors.
    sparse = entry_key("m", Output.LEXICAL, 512, "text", EncodeOptions(normalize=False))
    assert sparse == entry_key("m", Output.LEXICAL, 512, "text")
