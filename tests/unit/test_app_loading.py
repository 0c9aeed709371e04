"""While models load, the port answers: /health says "loading", model routes 503 + Retry-After."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litestar.testing import TestClient

from api.app import create_app
from engine import BackendHealth, InferenceEngine, Operation, Settings
from tests.conftest import wait_started
from tests.fake_backend import FakeBackend


class SlowBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    async def start(self) -> None:
        await asyncio.to_thread(self.release.wait, 10)
        await super().start()


def test_loading_then_ready() -> None:
    backend = SlowBackend()
    settings = Settings(embedding_model_name="org/m3")
    engine = InferenceEngine(settings, {op: [backend] for op in Operation})
    loaded: list[bool] = []
    app = create_app(settings, engine, on_loaded=lambda: loaded.append(True))
    with TestClient(app) as client:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "loading"
        assert client.get("/health/live").status_code == 200
        not_ready = client.get("/health/ready")
        assert (not_ready.status_code, not_ready.json()["status"]) == (503, "loading")
        busy = client.post("/v1/embeddings", json={"input": "hello"})
        assert busy.status_code == 503
        assert int(busy.headers["retry-after"]) >= 1
        assert "loading" in busy.json()["error"]["message"]

        backend.release.set()
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.post("/v1/embeddings", json={"input": "hello"}).status_code == 200
        assert client.get("/health/ready").json() == {"status": "ready"}
        assert loaded == [True]


@contextmanager
def failed_start(
    settings: Settings, message: str
) -> Iterator[tuple[TestClient[Any], list[BaseException]]]:
    """An app whose every backend failed to load with ``message``, once it has failed."""

    class Broken(FakeBackend):
        async def start(self) -> None:
            raise RuntimeError(message)

    failures: list[BaseException] = []
    engine = InferenceEngine(settings, {op: [Broken()] for op in Operation})
    loaded: list[bool] = []
    app = create_app(
        settings,
        engine,
        on_start_failure=failures.append,
        on_loaded=lambda: loaded.append(True),
    )
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not loaded
        yield client, failures


def test_failed_start_is_reported_and_degraded() -> None:
    with failed_start(Settings(), "weights are corrupt") as (client, failures):
        body = client.get("/health").json()
        assert body["status"] == "degraded"
        assert "weights are corrupt" in body["error"]
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert "weights are corrupt" in ready.json()["reasons"][0]
        assert client.get("/health/live").status_code == 200
        refused = client.post("/v1/embeddings", json={"input": "hello"})
        assert refused.status_code == 503
    assert "weights are corrupt" in str(failures[0])


class Unhealthy(FakeBackend):
    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def health(self) -> BackendHealth:
        return BackendHealth(loaded=True, healthy=False, device="remote", detail="unreachable")


def test_ready_while_a_chain_can_fall_through_and_not_once_it_cannot() -> None:
    settings = Settings()
    fallback = {op: [Unhealthy("remote"), FakeBackend()] for op in Operation}
    engine = InferenceEngine(settings, fallback)
    with TestClient(create_app(settings, engine)) as client:
        wait_started(client)
        assert client.get("/health").status_code == 503  # a backend is down...
        assert client.get("/health/ready").json() == {"status": "ready"}  # ...but covered

    alone = InferenceEngine(settings, {op: [Unhealthy("remote")] for op in Operation})
    with TestClient(create_app(settings, alone)) as client:
        wait_started(client)
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["reasons"] == [
            f"{op}: no loaded, healthy backend (remote: unreachable)" for op in sorted(Operation)
        ]


def _failed_start(settings: Settings) -> tuple[dict[str, object], dict[str, object], str]:
    message = "no config.json in /srv/models/bge-m3: not a model folder"
    with failed_start(settings, message) as (client, _):
        refused = client.post("/v1/embeddings", json={"input": "hello"})
        return (
            client.get("/health").json(),
            client.get("/health/ready").json(),
            refused.json()["error"]["message"],
        )


def test_a_failed_start_shows_no_filesystem_path_unless_debugging() -> None:
    for shown in _failed_start(Settings()):
        assert "/srv" not in str(shown)
        assert "no config.json in <path>: not a model folder" in str(shown)
    for shown in _failed_start(Settings(log_level="debug")):
        assert "/srv/models/bge-m3" in str(shown)
