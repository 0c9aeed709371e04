"""The remote backend when its remote fails, with real processes on loopback.

Remotes are another bge-serve (which can be killed and restarted) and the fake
TEI server (tests/fake_tei.py, for slowness and bad answers TEI would give).
The front end is a bge-serve subprocess; every client error is counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import ModelDirs, Server, free_port, start_server, stop_server
from tests.fake_tei import FakeTEI, Fault, serve
from tests.fixtures.tiny_models import corpus
from tests.reference import m3_reference

# Seconds a client waits before the test calls a request hung.
HANG = 30
PER_REQUEST = 4
FAST_RECOVERY = {"REMOTE_PROBE_INTERVAL_S": "0.3", "BREAKER_COOLDOWN_S": "0.5"}
DENSE_ONLY = {"LEXICAL_COLBERT_BACKENDS": "none", "RERANK_BACKENDS": "none"}


def health(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/health", timeout=5).json()
    return body


def wait_for_route(front: Server, backend: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while (state := health(front))["routes"]["embed"] != backend:
        assert time.monotonic() < deadline, f"embed never went to {backend}: {state}"
        time.sleep(0.1)


def embed(server: Server, texts: list[str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", json={"input": texts}, timeout=HANG)


def dense(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def test_remote_down_at_start_up_then_back(models: ModelDirs) -> None:
    port = free_port()
    front = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote,flag",
            "REMOTE_URL": f"http://127.0.0.1:{port}",
            **DENSE_ONLY,
            **FAST_RECOVERY,
        },
        until="started",
    )
    peer: Server | None = None
    try:
        state = health(front)
        assert state["status"] == "degraded"
        remote = state["backends"]["remote"]
        assert not remote["healthy"] and not remote["loaded"]
        assert f"http://127.0.0.1:{port}: unreachable" in remote["detail"]
        assert state["routes"]["embed"] == "flag"
        texts = corpus(5, seed=21)
        np.testing.assert_allclose(
            dense(embed(front, texts)), m3_reference(models.m3, texts).dense, atol=1e-5
        )

        peer = start_server(models, DENSE_ONLY, port=port)
        wait_for_route(front, "remote")
        state = health(front)
        assert state["status"] == "ok"
        passes = state["backends"]["flag"]["stats"]["embed.forward_passes"]
        requests = state["backends"]["remote"]["stats"]["requests"]
        np.testing.assert_allclose(
            dense(embed(front, texts)), m3_reference(models.m3, texts).dense, atol=1e-5
        )
        state = health(front)
        assert state["backends"]["flag"]["stats"]["embed.forward_passes"] == passes
        assert state["backends"]["remote"]["stats"]["requests"] == requests + 1
        assert "back up" in front.log.read_text()
    finally:
        stop_server(front)
        if peer is not None:
            stop_server(peer)


@pytest.fixture
def peer(models: ModelDirs) -> Iterator[Server]:
    live = start_server(models, DENSE_ONLY)
    yield live
    if live.process.poll() is None:
        stop_server(live)


def test_remote_killed_under_load_loses_no_request_then_traffic_returns(
    models: ModelDirs, peer: Server
) -> None:
    front = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote,flag",
            "REMOTE_URL": peer.url,
            # 500 requests may all land on flag at once when the remote dies.
            "MAX_QUEUED_REQUESTS": "1024",
            **DENSE_ONLY,
            **FAST_RECOVERY,
        },
    )
    pool = corpus(25, seed=31)
    reference = m3_reference(models.m3, pool).dense

    def texts(i: int) -> list[str]:
        # Several texts per request: enough work for the remote that requests are still
        # in flight when it dies, however fast this machine happens to be at the time.
        return [pool[(i + k) % 25] for k in range(PER_REQUEST)]

    async def load() -> list[tuple[int, httpx.Response]]:
        limits = httpx.Limits(max_connections=500)
        async with httpx.AsyncClient(base_url=front.url, timeout=HANG, limits=limits) as http:
            answered = 0

            async def one(i: int) -> tuple[int, httpx.Response]:
                nonlocal answered
                response = await http.post("/v1/embeddings", json={"input": texts(i)})
                answered += 1
                return i, response

            async def kill_midway() -> None:
                # The proxy outpaces this client: kill at the first answers, while the
                # front end still has most of the 500 in flight to the remote.
                while answered < 5:
                    await asyncio.sleep(0.001)
                os.kill(peer.process.pid, signal.SIGKILL)

            killer = asyncio.create_task(kill_midway())
            results = await asyncio.gather(*(one(i) for i in range(500)))
            await killer
            return results

    try:
        results = asyncio.run(load())
        errors = [(r.status_code, r.text[:200]) for _, r in results if r.status_code != 200]
        assert errors == []
        for i, response in results:
            rows = [(i + k) % 25 for k in range(PER_REQUEST)]
            np.testing.assert_allclose(dense(response), reference[rows], atol=1e-5)
        state = health(front)
        assert peer.process.wait(timeout=5) == -signal.SIGKILL
        assert state["backends"]["flag"]["stats"]["embed.forward_passes"] > 0  # fell through
        assert state["routes"]["embed"] == "flag"
        assert "unreachable" in state["backends"]["remote"]["detail"]

        # The remote comes back on its port: re-probed, breaker closed, traffic back.
        port = httpx.URL(peer.url).port
        assert port is not None
        revived = start_server(models, DENSE_ONLY, port=port)
        try:
            wait_for_route(front, "remote")
            before = health(front)["backends"]["flag"]["stats"]["embed.forward_passes"]
            for i in range(5):
                np.testing.assert_allclose(
                    dense(embed(front, [pool[i]]))[0], reference[i], atol=1e-5
                )
            state = health(front)
            assert state["status"] == "ok"
            assert state["backends"]["remote"]["healthy"]
            assert state["backends"]["flag"]["stats"]["embed.forward_passes"] == before
        finally:
            stop_server(revived)
    finally:
        stop_server(front)


def test_without_a_fallback_a_dead_remote_is_a_fast_clear_503(models: ModelDirs) -> None:
    port = free_port()
    front = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote",
            "RERANK_BACKENDS": "remote",
            "LEXICAL_COLBERT_BACKENDS": "none",
            "REMOTE_URL": f"http://operator:hunter2@127.0.0.1:{port}",
            "REMOTE_API_KEY": "never-logged-key",
            "REMOTE_TIMEOUT_S": "2",
        },
        until="started",
    )
    try:
        for path, body in (
            ("/v1/embeddings", {"input": ["a text"]}),
            ("/v1/rerank", {"query": "q", "documents": ["d"]}),
        ):
            started = time.monotonic()
            response = httpx.post(f"{front.url}{path}", json=body, timeout=HANG)
            assert time.monotonic() - started < 2 + 1
            assert response.status_code == 503
            assert response.headers["retry-after"]
            message = response.json()["error"]["message"]
            assert f"the remote http://127.0.0.1:{port} is down" in message
            assert "hunter2" not in message and "operator" not in message
        log = front.log.read_text()
        assert "hunter2" not in log and "never-logged-key" not in log
    finally:
        stop_server(front)


@pytest.fixture
def tei() -> Iterator[tuple[FakeTEI, str]]:
    fake = FakeTEI(kind="embedding", dimension=32)  # the tiny bge-m3's width: chains agree
    with serve(fake) as url:
        yield fake, url


def tei_front(models: ModelDirs, url: str, chain: str, **extra: str) -> Server:
    return start_server(
        models,
        {
            "EMBED_BACKENDS": chain,
            "REMOTE_EMBED_URL": url,
            "REMOTE_TIMEOUT_S": "1",
            **DENSE_ONLY,
            **extra,
        },
    )


def test_a_remote_slower_than_the_timeout_is_a_504_or_falls_through(
    models: ModelDirs, tei: tuple[FakeTEI, str]
) -> None:
    fake, url = tei
    texts = ["one slow text", "another"]
    alone, with_flag = tei_front(models, url, "remote"), tei_front(models, url, "remote,flag")
    try:
        fake.delay_s = 3
        started = time.monotonic()
        response = embed(alone, texts)
        assert response.status_code == 504
        assert time.monotonic() - started < 1 + 1
        assert "did not answer /embed within 1 s (REMOTE_TIMEOUT_S)" in response.text
        np.testing.assert_allclose(
            dense(embed(with_flag, texts)), m3_reference(models.m3, texts).dense, atol=1e-5
        )
    finally:
        stop_server(alone)
        stop_server(with_flag)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.malformed(), "answered /embed with a malformed body"),
        (Fault.short(), "answered /embed with 2 results for 3 inputs"),
        (Fault.status(424, message="Inference failed"), "HTTP 424: Inference failed"),
    ],
)
def test_bad_answers_are_a_502_never_a_partial_result(
    models: ModelDirs, tei: tuple[FakeTEI, str], fault: Fault, message: str
) -> None:
    fake, url = tei
    texts = ["one", "two", "three"]
    alone, with_flag = tei_front(models, url, "remote"), tei_front(models, url, "remote,flag")
    try:
        fake.fault = fault
        response = embed(alone, texts)
        assert response.status_code == 502
        assert message in response.json()["error"]["message"]
        assert "data" not in response.json()
        # With a fallback the client never sees the bad answer.
        np.testing.assert_allclose(
            dense(embed(with_flag, texts)), m3_reference(models.m3, texts).dense, atol=1e-5
        )
    finally:
        stop_server(alone)
        stop_server(with_flag)
    assert fake.contract_violations == []


def test_the_remotes_validation_error_reaches_the_client_without_fall_through(
    models: ModelDirs, tei: tuple[FakeTEI, str]
) -> None:
    fake, url = tei
    front = tei_front(models, url, "remote,flag")
    try:
        passes = health(front)["backends"]["flag"]["stats"]["embed.forward_passes"]
        fake.fault = Fault.status(422, message="Input validation error: `inputs` must not be odd")
        response = embed(front, ["one"])
        assert response.status_code == 422
        error = response.json()["error"]
        assert (
            "refused the input: Input validation error: `inputs` must not be odd"
            in (error["message"])
        )
        assert health(front)["backends"]["flag"]["stats"]["embed.forward_passes"] == passes
    finally:
        stop_server(front)


def test_tei_batches_are_split_and_merged_in_order_through_the_service(
    models: ModelDirs,
) -> None:
    fake = FakeTEI(kind="embedding", dimension=32, max_client_batch_size=4)
    with serve(fake) as url:
        front = tei_front(models, url, "remote")
        try:
            texts = corpus(10, seed=41)
            response = embed(front, texts)
            expected = np.array([fake.vector(t) for t in texts], dtype=np.float32)
            np.testing.assert_array_equal(dense(response), expected)
            assert response.json()["usage"]["prompt_tokens"] == sum(
                fake.token_count(t) for t in texts
            )
            # The chunks go out concurrently, so they may arrive in any order.
            chunks = [r.json["inputs"] for r in fake.requests if r.path == "/embed"][1:]
            chunks.sort(key=lambda chunk: texts.index(chunk[0]))
            assert chunks == [texts[0:4], texts[4:8], texts[8:10]]
        finally:
            stop_server(front)
    assert fake.contract_violations == []
