"""A bge-serve remote (REMOTE_KIND=self) passes normalize false and Left truncation on to
its peer's TEI routes; the answers equal the peer's own, and the flag backend's."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from backends.remote import RemoteBackend
from engine import Operation, Output, Settings
from engine.errors import InvalidInput
from engine.types import EncodeOptions, Encoding
from tests.conftest import Server
from tests.texts import LONG_TEXT

TEXTS = ["hello world", "the quick brown fox", LONG_TEXT]


def through_remote(server: Server, outputs: frozenset[Output], options: EncodeOptions) -> Encoding:
    async def run() -> Encoding:
        settings = Settings(remote_url=server.url, remote_kind="self", remote_timeout_s=60)
        backend = RemoteBackend(settings, frozenset({Operation.EMBED, Operation.LEXICAL_COLBERT}))
        await backend.start()
        try:
            return await backend.encode(TEXTS, outputs, options)
        finally:
            await backend.stop()

    return asyncio.run(run())


def peer(server: Server, path: str, body: dict[str, object]) -> list[object]:
    response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer: list[object] = response.json()
    return answer


def test_raw_dense_is_the_peers_raw_dense(server: Server) -> None:
    encoding = through_remote(server, frozenset({Output.DENSE}), EncodeOptions(normalize=False))
    expected = peer(server, "/embed", {"inputs": TEXTS, "normalize": False})
    assert encoding.dense is not None
    np.testing.assert_array_equal(encoding.dense, np.asarray(expected, dtype=np.float32))
    assert not np.allclose(np.linalg.norm(encoding.dense, axis=1), 1.0, atol=1e-2)
    assert encoding.token_count > len(TEXTS)


def test_left_dense_and_colbert_are_the_peers_left(server: Server) -> None:
    left = EncodeOptions(truncate_left=True)
    body = {"inputs": TEXTS, "truncation_direction": "Left"}
    dense = through_remote(server, frozenset({Output.DENSE}), left).dense
    assert dense is not None
    np.testing.assert_array_equal(dense, np.asarray(peer(server, "/embed", body), np.float32))
    colbert = through_remote(server, frozenset({Output.COLBERT}), left).colbert
    assert colbert is not None
    for got, expected in zip(colbert, peer(server, "/embed_all", body), strict=True):
        np.testing.assert_allclose(got, np.asarray(expected, dtype=np.float32), atol=1e-7)
    right = peer(server, "/embed", {"inputs": [LONG_TEXT]})
    assert not np.allclose(dense[-1], np.asarray(right[0], dtype=np.float32), atol=1e-3)


def test_left_sparse_is_refused_naming_why(server: Server) -> None:
    with pytest.raises(InvalidInput, match="dense or ColBERT vectors alone"):
        through_remote(server, frozenset({Output.LEXICAL}), EncodeOptions(truncate_left=True))
