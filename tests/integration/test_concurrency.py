"""Concurrent requests each get their own answer back."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

from tests.conftest import ModelDirs, Server
from tests.fixtures.tiny_models import corpus
from tests.reference import m3_reference


def test_64_concurrent_requests_each_get_their_own_vector(
    server: Server, models: ModelDirs
) -> None:
    texts = [f"{i} {sentence}" for i, sentence in enumerate(corpus(64, seed=11))]
    expected = m3_reference(models.m3, texts).dense

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            return await asyncio.gather(
                *(http.post("/v1/embeddings", json={"input": text}) for text in texts)
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * len(texts)
    got = np.array([r.json()["data"][0]["embedding"] for r in responses])
    np.testing.assert_allclose(got, expected, atol=2e-5)
    # Distinct texts, distinct vectors: a mixed-up answer could not pass the check above.
    assert len({tuple(np.round(v, 4)) for v in got}) == len(texts)
