"""Shared fixtures: tiny models built offline, and live ``bge-serve`` processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import pytest
from litestar.testing import TestClient

from tests.fixtures.tiny_models import build_m3, build_reranker

# Tests never reach a hub: a model name that is not a folder must fail, not download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

SERVER_ENV = {
    "MAX_BATCH_SIZE": "64",
    "MAX_TEXT_CHARS": "20000",
    "MAX_REQUEST_BYTES": "2000000",
    "LOG_LEVEL": "warning",
    # The live tests measure computation (passes shared, equality with FlagEmbedding);
    # the cache's own tests turn it on.
    "CACHE_MAX_ITEMS": "0",
    # Equal to FlagEmbedding's float32 numbers on any CPU: auto would be bfloat16 on one
    # with AVX512-BF16 (tests/integration/test_dtype_bounds.py bounds that one).
    "DTYPE": "float32",
}


@dataclass(frozen=True)
class ModelDirs:
    m3: Path
    reranker: Path


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for an in-process backend's whole life: its workers live on it."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelDirs:
    root = tmp_path_factory.mktemp("models")
    # Named as the hub names them, with the published config.json's fields.
    return ModelDirs(
        m3=build_m3(root / "bge-m3"), reranker=build_reranker(root / "bge-reranker-v2-m3")
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def serve_command() -> list[str]:
    return [str(Path(sys.executable).with_name("bge-serve"))]


def server_env(models: ModelDirs, extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        **os.environ,
        "EMBEDDING_MODEL_NAME": str(models.m3),
        "RERANKER_MODEL_NAME": str(models.reranker),
        "HOST": "127.0.0.1",
        "DEVICE": "cpu",
        **SERVER_ENV,
    }
    env.update(extra)
    return env


def start_server(
    models: ModelDirs,
    extra: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    until: Literal["ok", "started"] = "ok",
) -> Server:
    """A live bge-serve; ``until="started"`` returns once it has loaded, healthy or not
    (a service whose remote backend is down answers /health 503 "degraded")."""
    port = port or free_port()
    env = server_env(models, {"PORT": str(port), **(extra or {})})
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        health = httpx.get(f"{url}/health", timeout=2)
        return health.status_code == 200 or (
            until == "started" and health.json()["status"] != "loading"
        )

    return launch("bge-serve", serve_command(), env, url, ready, models.m3.parent)


def launch(
    name: str,
    command: list[str],
    env: Mapping[str, str],
    url: str,
    ready: Callable[[], bool],
    log_dir: Path,
    timeout: float = 120,
) -> Server:
    """``command`` started with its output in a log file, once ``ready()`` says so."""
    # A file, not a pipe: a pipe nobody reads would block the server once it fills.
    log = log_dir / f"{name}-{urlsplit(url).port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()}")
        try:
            if ready():
                return Server(url=url, process=process, log=log)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{name} did not become ready in {timeout:g} s")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(models: ModelDirs) -> Iterator[Server]:
    live = start_server(models)
    yield live
    stop_server(live)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def wait_started(client: TestClient[Any]) -> None:
    """Until the app's engine has finished loading (in-process tests)."""
    deadline = time.monotonic() + 10
    while client.get("/health").json()["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.02)
