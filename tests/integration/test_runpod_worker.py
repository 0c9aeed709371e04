"""bge-runpod-worker: every route answered as over HTTP, through the RunPod SDK, and used
by a front bge-serve as ``REMOTE_KIND=runpod``.

The reference is the session's plain flag server (``server``), built from the same
settings: a job's output must equal that server's JSON answer, and a failed job's
error must be that server's error body with its status. The SDK's local API
server (``--rp_serve_api``) stands in for RunPod: it runs the worker's real
handler, concurrency and all, and answers /runsync as the platform does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from engine.settings import load_settings
from tests.conftest import (
    ModelDirs,
    Server,
    free_port,
    launch,
    server_env,
    start_server,
    stop_server,
)
from tests.fake_runpod import FakeRunPod
from tests.fake_runpod import serve as serve_runpod
from tests.fake_tei import FakeTEI, Fault, serve
from tests.texts import DOCUMENTS, QUERY, TEXTS
from worker.service import Worker

# (method, route, body): every operation of the service, in each dialect.
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/embeddings", {"input": TEXTS}),
    ("POST", "/v1/embeddings", {"input": TEXTS[:4], "encoding_format": "base64", "dimensions": 8}),
    ("POST", "/v1/sparse-embeddings", {"input": TEXTS}),
    ("POST", "/v1/sparse-embeddings", {"input": TEXTS[:4], "mapping": "tokenizer"}),
    ("POST", "/v1/hybrid-embeddings", {"input": TEXTS[:6], "return_colbert": True}),
    ("POST", "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 3}),
    ("POST", "/v2/rerank", {"query": QUERY, "documents": DOCUMENTS, "max_tokens_per_doc": 8}),
    ("POST", "/embeddings", {"input": TEXTS[:4], "model": "default/not-specified"}),
    ("POST", "/rerank", {"query": QUERY, "documents": DOCUMENTS[:4]}),
    ("POST", "/rerank", {"query": QUERY, "texts": DOCUMENTS[:4], "raw_scores": True}),
    ("POST", "/rerank", {"query": QUERY, "passage": DOCUMENTS[0]}),
    ("POST", "/rerank/batch", {"pairs": [{"query": QUERY, "passage": DOCUMENTS[0]}]}),
    ("POST", "/embed", {"inputs": TEXTS[:4]}),
    ("POST", "/", {"inputs": "hello world"}),
    ("POST", "/embed_sparse", {"inputs": TEXTS[:4]}),
    ("POST", "/embed_all", {"inputs": TEXTS[:2]}),
    ("POST", "/predict", {"inputs": [[QUERY, DOCUMENTS[0]], ["berlin", DOCUMENTS[1]]]}),
    ("POST", "/tokenize", {"inputs": TEXTS[:3]}),
    ("POST", "/decode", {"ids": [[0, 5, 6, 7, 2], [8, 9]], "skip_special_tokens": False}),
    ("GET", "/v1/models", None),
    ("GET", "/models", None),
    ("GET", "/info", None),
]
# Refusals, each in its route's dialect and status.
FAILURES: list[tuple[str, str, Any, int]] = [
    ("POST", "/v1/embeddings", {"input": ""}, 422),
    ("POST", "/v1/embeddings", {"input": ["a"] * 65}, 413),  # MAX_BATCH_SIZE=64
    ("POST", "/v1/embeddings", {"input": "a", "model": "text-embedding-3-small"}, 404),
    ("POST", "/v1/embeddings", {"input": "a", "dimensions": "8"}, 422),
    ("POST", "/v1/rerank", {"query": QUERY}, 422),
    ("POST", "/embed", {"inputs": ""}, 422),
    ("POST", "/embed", {"inputs": ["a"] * 65}, 413),
    ("POST", "/rerank", {"query": QUERY, "unknown": []}, 422),
    ("GET", "/v9/nothing", None, 404),
]


def without_ids(answer: Any) -> Any:
    """Cohere-shaped answers carry a fresh id, model lists the time of the answer."""
    if isinstance(answer, dict):
        return {k: without_ids(v) for k, v in answer.items() if k not in ("id", "created")}
    if isinstance(answer, list):
        return [without_ids(v) for v in answer]
    return answer


def assert_same(got: Any, want: Any, where: str = "$", rtol: float = 0.0) -> None:
    """Equal JSON; numbers within 1e-6 (two processes may split work across threads
    differently) and ``rtol``, everything else exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}", rtol)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]", rtol)
    elif isinstance(want, float):
        assert isinstance(got, int | float), (where, got, want)
        assert abs(got - want) <= 1e-6 + rtol * abs(want), (where, got, want)
    else:
        assert got == want, (where, got, want)


def over_http(server: Server, method: str, route: str, body: Any) -> httpx.Response:
    return httpx.request(method, f"{server.url}{route}", json=body, timeout=120)


def expected_failure(response: httpx.Response) -> dict[str, Any]:
    """What a failed job's error holds: the route's error body, its status, Retry-After."""
    detail: dict[str, Any] = {**response.json(), "http_status": response.status_code}
    if "retry-after" in response.headers:
        detail["retry_after"] = int(response.headers["retry-after"])
    return detail


# -- the handler, in process ---------------------------------------------------------


@pytest.fixture(scope="module")
def worker(models: ModelDirs, loop: asyncio.AbstractEventLoop) -> Iterator[Worker]:
    """A worker with the session server's settings, on this module's event loop."""
    built = Worker(load_settings([], environ=server_env(models, {})))
    loop.run_until_complete(built.start())
    yield built
    loop.run_until_complete(built.stop())


def answer(loop: asyncio.AbstractEventLoop, worker: Worker, job_input: Any) -> Any:
    return loop.run_until_complete(worker.answer(job_input))


@pytest.mark.parametrize(("method", "route", "body"), ROUTES)
def test_a_route_job_answers_what_the_http_route_answers(
    worker: Worker,
    loop: asyncio.AbstractEventLoop,
    server: Server,
    method: str,
    route: str,
    body: Any,
) -> None:
    job = {"route": route, "body": body} if body is not None else {"route": route}
    response = over_http(server, method, route, body)
    assert response.status_code == 200, response.text
    assert_same(without_ids(answer(loop, worker, job)), without_ids(response.json()))


@pytest.mark.parametrize(("method", "route", "body", "status"), FAILURES)
def test_a_refused_job_carries_the_routes_error_body_and_status(
    worker: Worker,
    loop: asyncio.AbstractEventLoop,
    server: Server,
    method: str,
    route: str,
    body: Any,
    status: int,
) -> None:
    job = {"route": route, "body": body, "method": method}
    response = over_http(server, method, route, body)
    assert response.status_code == status
    output = answer(loop, worker, job)
    # RunPod takes a job's error as a string only (a dict leaves the job COMPLETED).
    assert list(output) == ["error"] and isinstance(output["error"], str)
    assert json.loads(output["error"]) == expected_failure(response)


def test_the_openai_route_shape_is_a_route_job(
    worker: Worker, loop: asyncio.AbstractEventLoop, server: Server
) -> None:
    body = {"input": TEXTS[:3], "model": "bge-m3"}
    job = {"openai_route": "/v1/embeddings", "openai_input": body}
    assert_same(answer(loop, worker, job), over_http(server, "POST", "/v1/embeddings", body).json())
    models = answer(loop, worker, {"openai_route": "/v1/models"})
    assert without_ids(models) == without_ids(over_http(server, "GET", "/v1/models", None).json())


def test_the_plans_texts_shape_answers_the_dense_vectors(
    worker: Worker, loop: asyncio.AbstractEventLoop, server: Server
) -> None:
    output = answer(loop, worker, {"texts": TEXTS})
    data = over_http(server, "POST", "/v1/embeddings", {"input": TEXTS}).json()["data"]
    assert list(output) == ["embeddings"]
    assert_same(output["embeddings"], [row["embedding"] for row in data])


def test_the_plans_rerank_shape_answers_index_and_score_best_first(
    worker: Worker, loop: asyncio.AbstractEventLoop, server: Server
) -> None:
    output = answer(loop, worker, {"query": QUERY, "documents": DOCUMENTS})
    results = over_http(server, "POST", "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS})
    want = [{"index": r["index"], "score": r["relevance_score"]} for r in results.json()["results"]]
    assert_same(output, {"results": want})
    scores = [row["score"] for row in output["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(DOCUMENTS)


@pytest.mark.parametrize(
    ("job_input", "says"),
    [
        ({"prompt": "hi"}, "it has keys prompt"),
        ("embed this", "must be a JSON object"),
        ({"route": "v1/embeddings", "body": {}}, "`route` must be a path"),
        ({"route": "/v1/embeddings", "body": {}, "method": "DELETE"}, "GET or POST"),
        ({"texts": []}, "`input`"),
    ],
)
def test_an_input_of_no_known_shape_is_refused_with_a_422_in_the_envelope(
    worker: Worker, loop: asyncio.AbstractEventLoop, job_input: Any, says: str
) -> None:
    detail = json.loads(answer(loop, worker, job_input)["error"])
    assert detail["http_status"] == 422
    assert detail["error"]["type"] == "invalid_request_error"
    assert says in detail["error"]["message"]


# Jobs whose strings hold a lone surrogate (JSON's \\u escapes can carry one; the SDK's json
# module decodes it), with the route and body a client sends the same request to over HTTP.
SURROGATES: list[tuple[Any, str, Any]] = [
    ({"texts": ["\udc00abc"]}, "/v1/embeddings", {"input": ["\udc00abc"]}),
    ({"texts": ["ok"], "model": "\udc00"}, "/v1/embeddings", {"input": ["ok"], "model": "\udc00"}),
    (
        {"query": "\ud800", "documents": ["a"]},
        "/v1/rerank",
        {"query": "\ud800", "documents": ["a"]},
    ),
    ({"route": "/embed", "body": {"inputs": "x\ud800"}}, "/embed", {"inputs": "x\ud800"}),
    (
        {"route": "/v1/embeddings", "body": {"input": ["\ud800"]}},
        "/v1/embeddings",
        {"input": ["\ud800"]},
    ),
]


def escaped_json(value: Any) -> bytes:
    """JSON as a client writes it: compact, non-ASCII (lone surrogates too) as \\u escapes."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")


@pytest.mark.parametrize(("job_input", "route", "body"), SURROGATES)
def test_a_lone_surrogate_is_the_routes_own_400_not_a_traceback(
    worker: Worker,
    loop: asyncio.AbstractEventLoop,
    server: Server,
    job_input: Any,
    route: str,
    body: Any,
) -> None:
    response = httpx.post(
        f"{server.url}{route}",
        content=escaped_json(body),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    output = answer(loop, worker, job_input)
    assert list(output) == ["error"] and isinstance(output["error"], str)
    assert json.loads(output["error"]) == expected_failure(response)


@pytest.mark.parametrize("route", ["/v1/emb\ud800", "/v1/embeddings/\udfff", "/\ud800"])
def test_a_route_named_with_a_lone_surrogate_is_a_404(
    worker: Worker, loop: asyncio.AbstractEventLoop, server: Server, route: str
) -> None:
    # Over HTTP the nearest a client can send is the surrogate's UTF-8 bytes, escaped.
    wire = route.encode("utf-8", "surrogatepass")
    response = httpx.get(f"{server.url}{quote(wire)}", timeout=60)
    assert response.status_code == 404
    detail = json.loads(answer(loop, worker, {"route": route})["error"])
    assert detail == expected_failure(response)


def test_a_job_whose_keys_hold_a_lone_surrogate_is_a_422(
    worker: Worker, loop: asyncio.AbstractEventLoop
) -> None:
    detail = json.loads(answer(loop, worker, {"\ud800key": 1})["error"])
    assert detail["http_status"] == 422
    assert "it has keys \ud800key" in detail["error"]["message"]


def test_concurrent_jobs_share_forward_passes(
    worker: Worker, loop: asyncio.AbstractEventLoop
) -> None:
    def passes() -> int:
        return int(worker.engine.health().backends["flag"].stats["embed.forward_passes"])

    async def together() -> list[Any]:
        jobs = [worker.answer({"texts": [f"job {i} text"]}) for i in range(12)]
        return list(await asyncio.gather(*jobs))

    before = passes()
    outputs = loop.run_until_complete(together())
    assert all(len(output["embeddings"]) == 1 for output in outputs)
    # Twelve one-text jobs at once: the micro-batcher puts them in a few passes.
    assert passes() - before <= 3


def test_a_worker_with_api_keys_set_answers_its_jobs(
    models: ModelDirs, loop: asyncio.AbstractEventLoop
) -> None:
    # RunPod authenticates callers; the service's own API_KEY must not refuse the jobs.
    keyed = Worker(load_settings([], environ=server_env(models, {"API_KEY": "k1,k2"})))
    loop.run_until_complete(keyed.start())
    try:
        output = answer(loop, keyed, {"texts": ["hello"]})
        assert len(output["embeddings"]) == 1, output
    finally:
        loop.run_until_complete(keyed.stop())


def test_an_answer_larger_than_runpod_takes_back_is_a_413_naming_its_size(
    models: ModelDirs, worker: Worker, loop: asyncio.AbstractEventLoop
) -> None:
    body: dict[str, Any] = {"input": TEXTS[:8], "return_colbert": True}
    as_numbers = answer(loop, worker, {"route": "/v1/hybrid-embeddings", "body": body})
    base64_body = {**body, "encoding_format": "base64"}
    as_base64 = answer(loop, worker, {"route": "/v1/hybrid-embeddings", "body": base64_body})

    def sent(output: Any) -> int:  # as the SDK hands a result back to RunPod
        return len(json.dumps({"output": output}, ensure_ascii=False).encode())

    assert sent(as_base64) * 3 < sent(as_numbers)
    limit_mb = (sent(as_base64) + sent(as_numbers)) / 2 / 1e6
    capped = Worker(
        load_settings([], environ=server_env(models, {"RUNPOD_MAX_OUTPUT_MB": str(limit_mb)}))
    )
    loop.run_until_complete(capped.start())
    try:
        refused = answer(loop, capped, {"route": "/v1/hybrid-embeddings", "body": body})
        detail = json.loads(refused["error"])
        assert detail["http_status"] == 413
        message = detail["error"]["message"]
        assert f"{sent(as_numbers) / 1e6:.3g} MB" in message and "RUNPOD_MAX_OUTPUT_MB" in message
        # The same vectors as base64 fit, and are the uncapped worker's answer.
        fits = answer(loop, capped, {"route": "/v1/hybrid-embeddings", "body": base64_body})
        assert fits == as_base64
    finally:
        loop.run_until_complete(capped.stop())


# -- through the SDK's local API server, and a front bge-serve ------------------------


def start_worker(models: ModelDirs, extra: dict[str, str] | None = None) -> Server:
    """The worker under the SDK's local API server, once it answers a job."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).with_name("bge-runpod-worker")),
        "--rp_serve_api",
        "--rp_api_host",
        "127.0.0.1",
        "--rp_api_port",
        str(port),
    ]
    env = server_env(models, extra or {})
    return launch(
        "bge-runpod-worker",
        command,
        env,
        url,
        lambda: runsync(url, {"route": "/health"})["status"] == "COMPLETED",
        models.m3.parent,
    )


def runsync(url: str, job_input: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/runsync",
        content=escaped_json({"input": job_input}),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


@pytest.fixture(scope="module")
def sdk_worker(models: ModelDirs) -> Iterator[Server]:
    live = start_worker(models)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def front(models: ModelDirs, sdk_worker: Server) -> Iterator[Server]:
    live = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote",
            "LEXICAL_COLBERT_BACKENDS": "remote",
            "RERANK_BACKENDS": "remote",
            "REMOTE_KIND": "runpod",
            "REMOTE_URL": sdk_worker.url,
            "REMOTE_API_KEY": "rp-test-key",
        },
    )
    yield live
    stop_server(live)


def test_the_sdk_runs_the_handler_and_reports_completed_and_failed_jobs(
    sdk_worker: Server, server: Server
) -> None:
    body = {"input": TEXTS[:5], "return_colbert": True}
    job = runsync(sdk_worker.url, {"route": "/v1/hybrid-embeddings", "body": body})
    assert job["status"] == "COMPLETED"
    want = over_http(server, "POST", "/v1/hybrid-embeddings", body).json()
    assert_same(job["output"], want)

    refused = runsync(sdk_worker.url, {"route": "/embed", "body": {"inputs": ""}})
    assert refused["status"] == "FAILED"
    response = over_http(server, "POST", "/embed", {"inputs": ""})
    assert json.loads(refused["error"]) == expected_failure(response)


def test_through_the_sdk_no_job_fails_with_a_traceback(sdk_worker: Server, server: Server) -> None:
    job_input, route, body = SURROGATES[0]  # the issue's {"texts": ["\udc00abc"]}
    refused = runsync(sdk_worker.url, job_input)
    assert refused["status"] == "FAILED"
    assert "Traceback" not in refused["error"] and "error_traceback" not in refused["error"]
    response = httpx.post(
        f"{server.url}{route}",
        content=escaped_json(body),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    assert json.loads(refused["error"]) == expected_failure(response)

    unknown = runsync(sdk_worker.url, {"route": "/v1/emb\ud800"})
    assert unknown["status"] == "FAILED"
    assert json.loads(unknown["error"])["http_status"] == 404
    assert "Traceback" not in sdk_worker.log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_local_test_server_exits_zero_on_a_stop_signal(
    models: ModelDirs, sig: signal.Signals
) -> None:
    live = start_worker(models)
    try:
        live.process.send_signal(sig)
        assert live.process.wait(timeout=30) == 0, live.log.read_text()
        assert "Traceback" not in live.log.read_text()
    finally:
        stop_server(live)


def test_a_front_end_finds_the_worker_and_routes_everything_to_it(front: Server) -> None:
    health = httpx.get(f"{front.url}/health").json()
    assert health["status"] == "ok"
    assert health["routes"] == {"embed": "remote", "lexical_colbert": "remote", "rerank": "remote"}
    assert "bge-runpod-worker on RunPod serving embed" in health["backends"]["remote"]["detail"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/embeddings", {"input": TEXTS}),
        ("/v1/sparse-embeddings", {"input": TEXTS}),
        ("/v1/hybrid-embeddings", {"input": TEXTS[:8], "return_colbert": True}),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}),
        ("/v2/rerank", {"query": QUERY, "documents": DOCUMENTS}),
        ("/tokenize", {"inputs": TEXTS[:3]}),
        ("/decode", {"ids": [[0, 5, 6, 7, 2], [8, 9]], "skip_special_tokens": False}),
    ],
)
def test_a_front_end_through_the_worker_answers_as_the_local_backend(
    front: Server, server: Server, route: str, body: dict[str, Any]
) -> None:
    through = over_http(front, "POST", route, body)
    local = over_http(server, "POST", route, body)
    assert through.status_code == local.status_code == 200, through.text
    assert_same(without_ids(through.json()), without_ids(local.json()))


def test_a_front_ends_refusals_are_its_own_and_reach_no_job(front: Server) -> None:
    response = over_http(front, "POST", "/v1/embeddings", {"input": ""})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "input"


def test_a_front_end_halves_a_batch_whose_answer_is_over_the_workers_cap(
    models: ModelDirs, worker: Worker, loop: asyncio.AbstractEventLoop, server: Server
) -> None:
    def sent(texts: list[str]) -> int:  # the worker's answer, as the SDK hands it back
        body = {"input": texts, "return_colbert": True, "encoding_format": "base64"}
        output = answer(loop, worker, {"route": "/v1/hybrid-embeddings", "body": body})
        return len(json.dumps({"output": output}, ensure_ascii=False).encode())

    whole, halves = sent(TEXTS[:8]), max(sent(TEXTS[:4]), sent(TEXTS[4:8]))
    capped = start_worker(models, {"RUNPOD_MAX_OUTPUT_MB": str((whole + halves) / 2 / 1e6)})
    front = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote",
            "LEXICAL_COLBERT_BACKENDS": "remote",
            "RERANK_BACKENDS": "remote",
            "REMOTE_KIND": "runpod",
            "REMOTE_URL": capped.url,
        },
    )

    def computed() -> int:  # texts the capped worker's model has run
        health = runsync(capped.url, {"route": "/health"})["output"]
        return int(health["backends"]["flag"]["stats"]["embed.units_computed"])

    try:
        body = {"input": TEXTS[:8], "return_colbert": True}
        local = over_http(server, "POST", "/v1/hybrid-embeddings", body).json()
        counts = [computed()]
        for _ in range(2):
            through = over_http(front, "POST", "/v1/hybrid-embeddings", body)
            assert through.status_code == 200, through.text
            # Batches of four, not eight: padding moves the last float32 bits.
            assert_same(through.json(), local, rtol=1e-5)
            counts.append(computed())
        # The first: the eight refused as one job, then two jobs of four. The second
        # starts at four.
        assert [b - a for a, b in itertools.pairwise(counts)] == [16, 8]
    finally:
        stop_server(front)
        stop_server(capped)


# -- a worker whose own backend fails or stalls -------------------------------------


@pytest.fixture(scope="module")
def tei() -> Iterator[tuple[FakeTEI, str]]:
    fake = FakeTEI()
    with serve(fake) as url:
        yield fake, url


@pytest.fixture(scope="module")
def tei_front(models: ModelDirs, tei: tuple[FakeTEI, str]) -> Iterator[Server]:
    """A front end over a worker whose embeddings come from a (fake) TEI."""
    _, tei_url = tei
    worker = start_worker(
        models,
        {
            "EMBED_BACKENDS": "remote",
            "LEXICAL_COLBERT_BACKENDS": "none",
            "RERANK_BACKENDS": "none",
            "REMOTE_URL": tei_url,
            "REMOTE_RETRIES": "0",
        },
    )
    front = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote",
            "LEXICAL_COLBERT_BACKENDS": "none",
            "RERANK_BACKENDS": "none",
            "REMOTE_KIND": "runpod",
            "REMOTE_URL": worker.url,
            "REMOTE_TIMEOUT_S": "2",
            "REMOTE_RETRIES": "0",
        },
    )
    yield front
    stop_server(front)
    stop_server(worker)


@pytest.fixture
def fake_tei(tei: tuple[FakeTEI, str]) -> Iterator[FakeTEI]:
    fake, _ = tei
    yield fake
    fake.reset()


def test_a_job_that_fails_in_the_worker_is_a_502_with_its_message(
    tei_front: Server, fake_tei: FakeTEI, tei: tuple[FakeTEI, str]
) -> None:
    fake_tei.fault = Fault.status(500, "Backend", message="GPU fell off the bus")
    response = over_http(tei_front, "POST", "/v1/embeddings", {"input": ["hello"]})
    assert response.status_code == 502
    # Ours, naming the worker's endpoint; then the worker's, naming its TEI; then TEI's.
    assert re.fullmatch(
        r"the remote http://127\.0\.0\.1:\d+ answered /v1/embeddings with HTTP 502: "
        rf"the remote {re.escape(tei[1])} answered /embed with HTTP 500: GPU fell off the bus",
        response.json()["error"]["message"],
    )


def test_a_worker_slower_than_the_deadline_is_a_504(tei_front: Server, fake_tei: FakeTEI) -> None:
    fake_tei.delay_s = 6
    began = time.monotonic()
    response = over_http(tei_front, "POST", "/v1/embeddings", {"input": ["slow"]})
    took = time.monotonic() - began
    assert response.status_code == 504, response.text
    assert "REMOTE_TIMEOUT_S" in response.json()["error"]["message"]
    assert took < 5  # REMOTE_TIMEOUT_S=2, not the worker's 6 s
    fake_tei.delay_s = 0
    healthy = over_http(tei_front, "POST", "/v1/embeddings", {"input": ["hello"]})
    assert healthy.status_code == 200
    np.testing.assert_allclose(
        healthy.json()["data"][0]["embedding"], fake_tei.vector("hello"), atol=1e-6
    )


# -- deployed: the SDK's own job loop, with the worker's concurrency_modifier ----------


def test_a_deployed_worker_takes_several_jobs_at_once_and_batches_them(
    models: ModelDirs, server: Server
) -> None:
    fake = FakeRunPod()
    texts = [f"job number {i} about cats" for i in range(12)]
    fake.put(*({"id": f"job-{i}", "input": {"texts": [text]}} for i, text in enumerate(texts)))
    with serve_runpod(fake) as url:
        log = models.m3.parent / "bge-runpod-worker-deployed.log"
        env = server_env(models, {**fake.env(url), "RUNPOD_CONCURRENCY": "12"})
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(Path(sys.executable).with_name("bge-runpod-worker"))],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            results = fake.wait_results(12, timeout=120)
            fake.put({"id": "health", "input": {"route": "/health"}})
            health = fake.wait_results(13)["health"]["output"]
        finally:
            process.terminate()
            process.wait(timeout=30)
    # The concurrency_modifier let the SDK take all twelve in one request...
    assert fake.takes[0] == (12, 12), log.read_text()
    # ...and the micro-batcher computed them in a few forward passes, not twelve.
    assert health["backends"]["flag"]["stats"]["embed.forward_passes"] <= 4
    for i, text in enumerate(texts):
        want = over_http(server, "POST", "/v1/embeddings", {"input": [text]}).json()
        assert_same(results[f"job-{i}"]["output"]["embeddings"], [want["data"][0]["embedding"]])
    assert process.returncode == 0


def test_a_worker_that_cannot_load_its_models_exits_instead_of_taking_jobs(
    models: ModelDirs, tmp_path: Path
) -> None:
    # RunPod replaces a worker that exits; one that took jobs would fail every one of them.
    missing = tmp_path / "no-such-model"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("bge-runpod-worker")), "--rp_serve_api"],
        env=server_env(models, {"EMBEDDING_MODEL_NAME": str(missing)}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("bge-runpod-worker: ")
    assert "no-such-model" in done.stderr
    assert "Uvicorn running" not in done.stderr + done.stdout  # it never served


def test_an_argument_neither_a_setting_nor_the_sdks_is_refused(models: ModelDirs) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("bge-runpod-worker")), "--rp_serve_api", "--bogus"],
        env=server_env(models, {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "unrecognized arguments: --bogus" in done.stderr
