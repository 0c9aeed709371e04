"""The remote backend in front of a real infinity_emb server (the ROCm box's deployment).

Dense and rerank come from Infinity and must equal Infinity's own answers;
bge-m3 sparse, which Infinity cannot compute, comes from the local flag backend
in the same API. The Infinity server requires an API key, which the proxy sends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import (
    ModelDirs,
    Server,
    free_port,
    serve_command,
    server_env,
    start_server,
    stop_server,
)
from tests.texts import QUERY, TEXTS

# infinity_emb pins numpy<2: these run in .venv-infinity (make test).
pytestmark = pytest.mark.infinity

API_KEY = "infinity-test-key"
# infinity's cross-encoder truncates pairs its own way; the proxy must equal it regardless.
DOCUMENTS = ["the cat sat on the mat in paris", "berlin music history", "a dog", "paris"] * 3


@pytest.fixture(scope="module")
def infinity(models: ModelDirs) -> Iterator[Server]:
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("infinity_emb")),
        "v2",
        *("--model-id", str(models.m3), "--served-model-name", "tiny-m3"),
        *("--model-id", str(models.reranker), "--served-model-name", "tiny-reranker"),
        *("--engine", "torch", "--device", "cpu", "--no-model-warmup"),
        *("--api-key", API_KEY, "--port", str(port), "--host", "127.0.0.1"),
    ]
    env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    log = models.m3.parent / f"infinity-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"infinity_emb exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("infinity_emb did not start in 180 s")
        time.sleep(0.3)
    live = Server(url=url, process=process, log=log)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def front(models: ModelDirs, infinity: Server) -> Iterator[Server]:
    live = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote",
            "RERANK_BACKENDS": "remote",
            "LEXICAL_COLBERT_BACKENDS": "flag",
            "REMOTE_URL": infinity.url,
            "REMOTE_API_KEY": API_KEY,
            "LOG_LEVEL": "info",
        },
    )
    yield live
    stop_server(live)


def infinity_post(infinity: Server, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{infinity.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_auto_finds_infinity_and_picks_each_operations_model(front: Server) -> None:
    health = httpx.get(f"{front.url}/health").json()
    assert health["status"] == "ok"
    assert health["routes"] == {"embed": "remote", "lexical_colbert": "flag", "rerank": "remote"}
    detail = health["backends"]["remote"]["detail"]
    assert "Infinity serving embed (tiny-m3), rerank (tiny-reranker)" in detail
    log = front.log.read_text()
    assert "REMOTE_KIND=auto found Infinity" in log
    assert API_KEY not in log


def test_dense_equals_infinitys_own_answer(front: Server, infinity: Server) -> None:
    ours = httpx.post(f"{front.url}/v1/embeddings", json={"input": TEXTS}, timeout=120)
    assert ours.status_code == 200, ours.text
    theirs = infinity_post(infinity, "/embeddings", {"input": TEXTS, "model": "tiny-m3"})
    got = np.array([d["embedding"] for d in ours.json()["data"]], dtype=np.float32)
    want = np.array(
        [d["embedding"] for d in sorted(theirs["data"], key=lambda d: d["index"])],
        dtype=np.float32,
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert ours.json()["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]


def test_rerank_equals_infinitys_own_answer(front: Server, infinity: Server) -> None:
    ours = httpx.post(
        f"{front.url}/v1/rerank",
        json={"query": QUERY, "documents": DOCUMENTS, "raw_scores": True},
        timeout=120,
    )
    assert ours.status_code == 200, ours.text
    theirs = infinity_post(
        infinity,
        "/rerank",
        {"query": QUERY, "documents": DOCUMENTS, "raw_scores": True, "model": "tiny-reranker"},
    )
    got = {r["index"]: r["relevance_score"] for r in ours.json()["results"]}
    want = {r["index"]: r["relevance_score"] for r in theirs["results"]}
    assert got.keys() == want.keys() == set(range(len(DOCUMENTS)))
    np.testing.assert_allclose(
        [got[i] for i in range(len(DOCUMENTS))], [want[i] for i in range(len(DOCUMENTS))], atol=1e-5
    )
    # Sorted by score, the engine's job, not Infinity's.
    scores = [r["relevance_score"] for r in ours.json()["results"]]
    assert scores == sorted(scores, reverse=True)


def test_sparse_comes_from_the_local_flag_backend_in_the_same_api(
    front: Server, server: Server
) -> None:
    body = {"input": TEXTS[:5]}
    ours = httpx.post(f"{front.url}/v1/sparse-embeddings", json=body, timeout=120)
    local = httpx.post(f"{server.url}/v1/sparse-embeddings", json=body, timeout=120)
    assert ours.status_code == 200, ours.text
    assert ours.json()["data"] == local.json()["data"]


def test_a_wrong_api_key_leaves_the_remote_down_with_the_reason(
    models: ModelDirs, infinity: Server
) -> None:
    live = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote,flag",
            "LEXICAL_COLBERT_BACKENDS": "none",
            "RERANK_BACKENDS": "none",
            "REMOTE_URL": infinity.url,
            "REMOTE_KIND": "infinity",
            "REMOTE_API_KEY": "wrong",
        },
        until="started",
    )
    try:
        health = httpx.get(f"{live.url}/health").json()
        assert health["routes"]["embed"] == "flag"
        assert "HTTP 401: check REMOTE_API_KEY" in health["backends"]["remote"]["detail"]
        assert "wrong" not in live.log.read_text()
    finally:
        stop_server(live)


def test_asking_infinity_for_sparse_stops_start_up_and_says_why(
    models: ModelDirs, infinity: Server
) -> None:
    env = server_env(
        models,
        {
            "PORT": str(free_port()),
            "LEXICAL_COLBERT_BACKENDS": "remote,flag",
            "REMOTE_URL": infinity.url,
            "REMOTE_API_KEY": API_KEY,
        },
    )
    result = subprocess.run(serve_command(), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "LEXICAL_COLBERT_BACKENDS: the remote backend cannot serve sparse" in result.stderr
    assert "Infinity has no bge-m3 sparse or ColBERT output" in result.stderr
