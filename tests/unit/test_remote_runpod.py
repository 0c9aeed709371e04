"""REMOTE_KIND=runpod against RunPod's job API, scripted with httpx.MockTransport.

The SDK's local API server (tests/integration/test_runpod_worker.py) answers
/runsync only once the job is done; a real endpoint answers IN_QUEUE or
IN_PROGRESS when a cold start or a queue outlasts ``?wait``, and the client must
then follow ``/status/<id>``. These tests play those answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from backends.remote.kinds import identify
from backends.remote.runpod import RunpodClient
from backends.remote.transport import Deadline, RemoteClient
from engine.errors import (
    BackendFailure,
    BackendTimeout,
    InputTooLarge,
    Overloaded,
    StartupError,
)

URL = "https://api.runpod.ai/v2/abc123"
ROUTE_ANSWER = {"object": "list", "data": [{"index": 0, "embedding": [0.6, 0.8]}]}

Script = Callable[[httpx.Request], httpx.Response]


def job(status: str, **fields: Any) -> httpx.Response:
    return httpx.Response(200, json={"id": "job-1", "status": status, **fields})


def worker_error(body: dict[str, Any], status: int, **extra: Any) -> str:
    """What bge-runpod-worker puts in a FAILED job's error (worker.jobs.failure)."""
    return json.dumps({**body, "http_status": status, **extra})


class RunPod:
    """RunPod's API for one endpoint: answers in the order given, requests recorded."""

    def __init__(self, *answers: httpx.Response | Script) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith(("/cancel/job-1",)):
            return job("CANCELLED")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(request) if callable(answer) else answer

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.raw_path.decode()}" for r in self.requests]


def client(runpod: RunPod, retries: int = 0) -> RunpodClient:
    return RunpodClient(
        URL,
        api_key="rp-key",
        max_concurrency=4,
        retries=retries,
        transport=lambda: httpx.MockTransport(runpod),
    )


def post(runpod: RunPod, seconds: float = 5.0, retries: int = 0) -> httpx.Response:
    async def call() -> httpx.Response:
        remote = client(runpod, retries)
        try:
            answer = await remote.post("/v1/embeddings", {"input": ["a"]}, Deadline(seconds))
            return httpx.Response(answer.status, content=answer.content)
        finally:
            await asyncio.sleep(0)  # let a cancel in flight be sent
            await asyncio.sleep(0.05)
            await remote.close()

    return asyncio.run(call())


def test_a_completed_job_is_the_routes_answer_and_the_job_names_route_and_body() -> None:
    runpod = RunPod(job("COMPLETED", output=ROUTE_ANSWER))
    assert post(runpod).json() == ROUTE_ANSWER
    (request,) = runpod.requests
    assert request.method == "POST"
    assert request.url.path == "/v2/abc123/runsync"
    # RunPod waits for the job up to ?wait (ms), within what the call has left.
    assert 1000 <= int(request.url.params["wait"]) <= 5000
    assert request.headers["authorization"] == "Bearer rp-key"
    assert json.loads(request.content) == {
        "input": {"route": "/v1/embeddings", "body": {"input": ["a"]}}
    }


def test_a_queued_job_is_followed_through_its_status_until_it_completes() -> None:
    runpod = RunPod(
        job("IN_QUEUE"),
        job("IN_QUEUE"),
        job("IN_PROGRESS"),
        job("COMPLETED", output=ROUTE_ANSWER),
    )
    assert post(runpod).json() == ROUTE_ANSWER
    assert runpod.paths()[0].startswith("POST /v2/abc123/runsync?wait=")
    assert runpod.paths()[1:] == ["GET /v2/abc123/status/job-1"] * 3


def test_a_job_still_queued_at_the_deadline_times_out_and_is_cancelled() -> None:
    runpod = RunPod(job("IN_QUEUE"))
    with pytest.raises(BackendTimeout, match="did not answer /v1/embeddings within 1 s"):
        post(runpod, seconds=1.0)
    assert runpod.paths()[-1] == "POST /v2/abc123/cancel/job-1"
    assert "GET /v2/abc123/status/job-1" in runpod.paths()


def test_a_job_failed_by_the_route_is_the_routes_own_error() -> None:
    envelope = {"error": {"message": "`input` has 9 items; the limit is 8", "type": "x"}}
    runpod = RunPod(job("FAILED", error=worker_error(envelope, 413)))
    with pytest.raises(InputTooLarge, match="the limit is 8"):
        post(runpod)


def test_a_job_failed_by_the_workers_backend_is_a_backend_failure_with_its_message() -> None:
    envelope = {"error": {"message": "the remote http://tei answered /embed with HTTP 500"}}
    runpod = RunPod(job("FAILED", error=worker_error(envelope, 502)))
    with pytest.raises(BackendFailure, match="HTTP 502: the remote http://tei answered /embed"):
        post(runpod)


def test_an_overloaded_worker_is_retried_after_its_retry_after() -> None:
    envelope = {"error": {"message": "256 requests are queued"}}
    overloaded = job("FAILED", error=worker_error(envelope, 429, retry_after=1))
    runpod = RunPod(overloaded, job("COMPLETED", output=ROUTE_ANSWER))
    assert post(runpod, retries=1).json() == ROUTE_ANSWER
    with pytest.raises(Overloaded, match="256 requests are queued"):
        post(RunPod(overloaded), retries=0)


def test_an_exception_in_a_handler_is_reported_without_its_traceback() -> None:
    sdk_error = json.dumps(
        {
            "error_type": "<class 'RuntimeError'>",
            "error_message": "CUDA out of memory",
            "error_traceback": 'Traceback (most recent call last):\n  File "handler.py"',
        }
    )
    runpod = RunPod(job("FAILED", error=sdk_error))
    with pytest.raises(BackendFailure) as failure:
        post(runpod)
    assert "failed: <class 'RuntimeError'>: CUDA out of memory" in str(failure.value)
    assert "Traceback" not in str(failure.value)
    with pytest.raises(BackendFailure, match="failed: worker ran out of disk"):
        post(RunPod(job("FAILED", error="worker ran out of disk")))


def test_the_endpoints_execution_timeout_is_a_timeout() -> None:
    with pytest.raises(BackendTimeout, match="ran past the endpoint's execution timeout"):
        post(RunPod(job("TIMED_OUT")))
    with pytest.raises(BackendFailure, match="ended CANCELLED"):
        post(RunPod(job("CANCELLED")))


def test_runpods_own_refusals_go_through_the_transports_table() -> None:
    unauthorized = httpx.Response(401, json={"error": "Unauthorized"})
    with pytest.raises(BackendFailure, match=r"HTTP 401 \(check REMOTE_API_KEY\)"):
        post(RunPod(unauthorized))
    garbage = httpx.Response(200, content=b"<html>")
    with pytest.raises(BackendFailure, match="answered a job for /v1/embeddings with a malformed"):
        post(RunPod(garbage))


def test_a_get_is_a_job_too() -> None:
    runpod = RunPod(job("COMPLETED", output={"status": "ok"}))

    async def call() -> bytes:
        remote = client(runpod)
        try:
            return (await remote.get("/health", Deadline(5))).content
        finally:
            await remote.close()

    assert json.loads(asyncio.run(call())) == {"status": "ok"}
    assert json.loads(runpod.requests[0].content) == {
        "input": {"route": "/health", "method": "GET"}
    }


def test_auto_detection_says_to_set_runpod_for_a_runpod_endpoint() -> None:
    # RunPod's own GET /health of an endpoint.
    health = httpx.Response(200, json={"jobs": {"completed": 1}, "workers": {"idle": 0}})

    async def call() -> None:
        plain = RemoteClient(
            URL,
            api_key=None,
            max_concurrency=1,
            retries=0,
            transport=lambda: httpx.MockTransport(lambda _: health),
        )
        try:
            await identify(plain, Deadline(5))
        finally:
            await plain.close()

    with pytest.raises(StartupError, match="RunPod Serverless endpoint; set REMOTE_KIND=runpod"):
        asyncio.run(call())


def test_a_call_its_caller_gives_up_on_cancels_the_job() -> None:
    # A client that hung up, or a router that fell through: the job must not run on.
    runpod = RunPod(job("IN_QUEUE"))

    async def call() -> None:
        remote = client(runpod)
        try:
            task = asyncio.ensure_future(
                remote.post("/v1/embeddings", {"input": ["a"]}, Deadline(30))
            )
            await asyncio.sleep(0.4)  # queued, being followed
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
        finally:
            await remote.close()

    asyncio.run(call())
    assert runpod.paths()[-1] == "POST /v2/abc123/cancel/job-1"
