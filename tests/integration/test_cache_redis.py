"""The Redis cache against a real ``redis-server`` on a free loopback port: shared by two
services, byte-equal answers, and a Redis that dies and comes back costs nothing but hits."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import ModelDirs, Server, free_port, start_server, stop_server
from tests.texts import TEXTS


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is missing: apt-get install redis-server")
        self.process = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def keys(self) -> list[bytes]:
        return list(redis.Redis(port=self.port).scan_iter("bge:*"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pair(models: ModelDirs, store: RedisServer) -> Iterator[tuple[Server, Server]]:
    """Two replicas sharing one Redis."""
    env = {"REDIS_URL": store.url, "CACHE_TTL_S": "600"}
    first = start_server(models, env)
    second = start_server(models, env)
    yield first, second
    stop_server(first)
    stop_server(second)


def hybrid(server: Server, texts: list[str]) -> dict[str, Any]:
    body = {"input": texts, "return_colbert": True, "mapping": "tokenizer"}
    response = httpx.post(f"{server.url}/v1/hybrid-embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def dense_bytes(server: Server, texts: list[str]) -> list[bytes]:
    body = {"input": texts, "encoding_format": "base64"}
    data = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60).json()["data"]
    return [base64.b64decode(row["embedding"]) for row in data]


def passes(server: Server) -> int:
    stats = httpx.get(f"{server.url}/health").json()["backends"]["flag"]["stats"]
    return int(stats["embed.forward_passes"])


def test_a_replica_answers_from_what_the_other_computed(
    pair: tuple[Server, Server], store: RedisServer
) -> None:
    first, second = pair
    texts = TEXTS[:8]
    computed = hybrid(first, texts)
    assert len(store.keys()) == 3 * len(texts)  # dense, sparse, ColBERT per text
    before = passes(second)
    cached = hybrid(second, texts)
    assert passes(second) == before  # no forward pass: every text was in Redis
    assert cached == computed  # the same JSON, usage included


def test_cached_base64_vectors_are_byte_equal(
    pair: tuple[Server, Server], store: RedisServer
) -> None:
    first, second = pair
    texts = TEXTS[10:14]
    assert dense_bytes(second, texts) == dense_bytes(first, texts)


def test_redis_dying_costs_hits_not_answers(
    pair: tuple[Server, Server], store: RedisServer
) -> None:
    first, _ = pair
    texts = TEXTS[20:24]
    expected = dense_bytes(first, texts)
    store.stop()
    try:
        for _ in range(3):  # uncached now: each call computes, none fails
            before = passes(first)
            assert dense_bytes(first, texts) == expected
            assert passes(first) > before
    finally:
        store.start()  # an empty Redis, as after a restart
    warnings = [
        line for line in first.log.read_text().splitlines() if "Redis is unreachable" in line
    ]
    assert len(warnings) == 1  # once per outage, not per request
    deadline = time.monotonic() + 15  # the service asks Redis again every 5 s
    while not store.keys():
        assert time.monotonic() < deadline, "caching did not resume"
        dense_bytes(first, texts)
        time.sleep(0.5)
    before = passes(first)
    assert dense_bytes(first, texts) == expected
    assert passes(first) == before
    assert "caching resumed" in first.log.read_text()
