"""normalize false and Left truncation through the remote backend: a TEI remote is sent
them (and its raw rows are not renormalised), an Infinity remote refuses them naming why,
before sending anything."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import respx

from backends.remote import RemoteBackend
from engine import Operation, Output, Settings
from engine.errors import InvalidInput
from engine.types import EncodeOptions, Encoding
from tests.fake_tei import FakeTEI
from tests.unit.test_remote_backend import MODELS, infinity_backend

EMBED_URL = "http://tei-embed:80"
SPARSE_URL = "http://tei-splade:80"
TEXTS = ["a cat in paris", "berlin music history", "x"]


@pytest.fixture
def embedder() -> FakeTEI:
    return FakeTEI(kind="embedding", dimension=8, max_client_batch_size=2)


@pytest.fixture
def splade() -> FakeTEI:
    return FakeTEI(kind="splade")


@pytest.fixture
def tei(embedder: FakeTEI, splade: FakeTEI) -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        router.route(host="tei-embed").mock(side_effect=embedder.respx_async_side_effect)
        router.route(host="tei-splade").mock(side_effect=splade.respx_async_side_effect)
        yield router
    assert embedder.contract_violations == [] and splade.contract_violations == []


def encoded(outputs: frozenset[Output], options: EncodeOptions) -> Encoding:
    async def run() -> Encoding:
        settings = Settings(
            remote_embed_url=EMBED_URL,
            remote_sparse_url=SPARSE_URL,
            remote_kind="tei",
            remote_timeout_s=5.0,
        )
        backend = RemoteBackend(
            settings,
            frozenset({Operation.EMBED, Operation.LEXICAL_COLBERT}),
            transport=httpx.AsyncHTTPTransport,
        )
        await backend.start()
        try:
            return await backend.encode(TEXTS, outputs, options)
        finally:
            await backend.stop()

    return asyncio.run(run())


def sent(fake: FakeTEI, path: str) -> list[dict[str, object]]:
    """The bodies posted to ``path``, the start-up probes left out."""
    return [r.json for r in fake.requests if r.path == path and r.json["inputs"] != _PROBE]


_PROBE = ["dimension probe"]


def test_tei_is_sent_normalize_false_and_its_raw_rows_are_kept(
    tei: respx.MockRouter, embedder: FakeTEI
) -> None:
    encoding = encoded(frozenset({Output.DENSE}), EncodeOptions(normalize=False))
    expected = np.array([embedder.vector(t, normalize=False) for t in TEXTS], dtype=np.float32)
    assert encoding.dense is not None
    np.testing.assert_array_equal(encoding.dense, expected)
    assert not np.allclose(np.linalg.norm(expected, axis=1), 1.0, atol=0.1)
    bodies = sent(embedder, "/embed")
    assert [body["normalize"] for body in bodies] == [False, False]  # two chunks
    assert all("truncation_direction" not in body for body in bodies)  # Right: TEI's default


def test_tei_is_sent_left_for_dense_and_sparse(
    tei: respx.MockRouter, embedder: FakeTEI, splade: FakeTEI
) -> None:
    left = EncodeOptions(truncate_left=True)
    encoded(frozenset({Output.DENSE}), left)
    encoded(frozenset({Output.LEXICAL}), left)
    dense_bodies = sent(embedder, "/embed")
    sparse_bodies = sent(splade, "/embed_sparse")
    for body in (*dense_bodies, *sparse_bodies):
        assert body["truncation_direction"] == "Left" and body["truncate"] is True
    assert all(body["normalize"] is True for body in dense_bodies)
    assert sparse_bodies


@pytest.mark.parametrize(
    ("options", "param"),
    [
        (EncodeOptions(normalize=False), "normalize"),
        (EncodeOptions(truncate_left=True), "truncation_direction"),
    ],
)
def test_an_infinity_remote_refuses_what_its_api_cannot_say(
    options: EncodeOptions, param: str
) -> None:
    sent: list[tuple[str, Any]] = []
    backend = infinity_backend(MODELS, sent)

    async def run() -> None:
        await backend.start()
        probed = len(sent)
        try:
            with pytest.raises(InvalidInput) as caught:
                await backend.encode(TEXTS, frozenset({Output.DENSE}), options)
            assert caught.value.param == param
            assert "Infinity at http://infinity:7997" in caught.value.message
            assert len(sent) == probed  # refused before anything was sent
        finally:
            await backend.stop()

    asyncio.run(run())
