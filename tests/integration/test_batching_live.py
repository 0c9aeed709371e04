"""Micro-batching through a live server: no mixed results, load shedding, departed clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.fixtures.tiny_models import build_m3, corpus
from tests.texts import LONG_TEXT

Request = tuple[str, dict[str, object]]


def mixed_requests(count: int) -> list[Request]:
    sentences = corpus(count * 2, seed=31)
    requests: list[Request] = []
    for i in range(count):
        text, other = f"{i} {sentences[2 * i]}", sentences[2 * i + 1]
        kind = i % 5
        if kind == 0:
            requests.append(("/v1/embeddings", {"input": text}))
        elif kind == 1:
            requests.append(("/v1/embeddings", {"input": [text, other, "x" * (i % 7 + 1)]}))
        elif kind == 2:
            requests.append(("/v1/sparse-embeddings", {"input": [text, other]}))
        elif kind == 3:
            requests.append(
                ("/v1/hybrid-embeddings", {"input": text, "return_colbert": i % 2 == 0})
            )
        else:
            requests.append(("/v1/rerank", {"query": text, "documents": [other, text, "x"]}))
    return requests


def comparable(path: str, body: dict[str, object]) -> list[np.ndarray]:
    """The numbers of an answer, flattened per item, in answer order."""
    if path == "/v1/rerank":
        results = body["results"]
        assert isinstance(results, list)
        return [np.array([[r["index"], r["relevance_score"]] for r in results])]
    data = body["data"]
    assert isinstance(data, list)
    out = []
    for item in data:
        parts: list[float] = []
        for key in ("embedding", "dense"):
            if key in item:
                parts += item[key]
        if "sparse" in item:
            parts += item["sparse"]["indices"] + item["sparse"]["values"]
        if "colbert" in item:
            parts += np.ravel(item["colbert"]).tolist()
        out.append(np.array(parts))
    return out


def test_200_concurrent_mixed_requests_each_equal_their_solo_answer(server: Server) -> None:
    requests = mixed_requests(200)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        solo = [http.post(path, json=body).json() for path, body in requests]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            return await asyncio.gather(*(http.post(path, json=body) for path, body in requests))

    before = httpx.get(f"{server.url}/health").json()["backends"]["flag"]["stats"]
    together = asyncio.run(fire())
    after = httpx.get(f"{server.url}/health").json()["backends"]["flag"]["stats"]
    for (path, _), alone, response in zip(requests, solo, together, strict=True):
        assert response.status_code == 200, response.text
        for a, b in zip(comparable(path, alone), comparable(path, response.json()), strict=True):
            np.testing.assert_allclose(b, a, atol=2e-5, rtol=1e-5)
    # Concurrent requests really were batched together.
    passes = after["embed.forward_passes"] - before["embed.forward_passes"]
    units = after["embed.units_computed"] - before["embed.units_computed"]
    assert passes < units


@pytest.fixture(scope="module")
def slow_server(models: ModelDirs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # A bigger model, so that a 64 x 512-token request keeps the model busy for seconds.
    folder = build_m3(
        Path(tmp_path_factory.mktemp("slow")) / "m3",
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
    )
    live = start_server(
        ModelDirs(m3=folder, reranker=models.reranker),
        {"MAX_QUEUED_REQUESTS": "2", "MAX_BATCH_SIZE": "128"},
    )
    yield live
    stop_server(live)


def busy(server: Server) -> tuple[threading.Thread, list[int]]:
    """Start a long request in the background; returns its thread and a status slot."""
    status: list[int] = []

    def run() -> None:
        response = httpx.post(
            f"{server.url}/v1/embeddings", json={"input": [LONG_TEXT] * 64}, timeout=120
        )
        status.append(response.status_code)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    return thread, status


def stats(server: Server) -> dict[str, int]:
    stat: dict[str, int] = httpx.get(f"{server.url}/health").json()["backends"]["flag"]["stats"]
    return stat


def test_full_queue_answers_429_with_retry_after_and_recovers(slow_server: Server) -> None:
    thread, status = busy(slow_server)

    async def crowd() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=120) as http:
            return await asyncio.gather(
                *(http.post("/v1/embeddings", json={"input": f"text {i}"}) for i in range(6))
            )

    responses = asyncio.run(crowd())
    thread.join()
    assert status == [200]
    codes = sorted(r.status_code for r in responses)
    assert codes.count(429) == 5  # the long request and one more fill MAX_QUEUED_REQUESTS=2
    assert codes.count(200) == 1
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert "MAX_QUEUED_REQUESTS" in response.json()["error"]["message"]
            assert response.json()["error"]["code"] == "overloaded"
    after = httpx.post(f"{slow_server.url}/v1/embeddings", json={"input": "recovered"})
    assert after.status_code == 200


def test_a_client_that_leaves_costs_no_forward_pass(slow_server: Server) -> None:
    before = stats(slow_server)
    thread, status = busy(slow_server)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{slow_server.url}/v1/embeddings", json={"input": ["gone", "also gone"]}, timeout=0.3
        )
    thread.join()
    assert status == [200]
    after = stats(slow_server)
    assert after["embed.units_computed"] - before["embed.units_computed"] == 64
    assert after["embed.units_skipped"] - before["embed.units_skipped"] == 2
