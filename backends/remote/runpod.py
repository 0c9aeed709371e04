"""A RunPod Serverless endpoint running ``bge-runpod-worker`` (``REMOTE_KIND=runpod``).

The worker answers every route of this service, so the wire format is the
peer's (``PeerRemote``); only the transport differs (kinds.py pairs them). Each
request becomes a job, ``POST {REMOTE_URL}/runsync`` with
``{"input": {"route", "body"}}``:

- ``COMPLETED``: the output is the route's answer;
- ``IN_QUEUE`` / ``IN_PROGRESS`` (a cold start, a long queue): ``GET /status/<id>``
  until it ends or the call's deadline passes (REMOTE_TIMEOUT_S covers queueing
  and the cold start); a job given up on is cancelled, so it burns no GPU time;
- ``FAILED``: the worker's error, which is the route's error body with its HTTP
  status (``worker.jobs``), turned back into the answer the route gave, so the
  transport maps it as it maps any remote's (a 502 there is our 502, with its
  message); any other error text is a backend failure quoting it;
- ``TIMED_OUT`` (the endpoint's execution timeout) and ``CANCELLED``: failures.

What RunPod's API itself answers (401 for a bad key, 429, 5xx) goes through the
transport's usual table and retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
from typing import Any, ClassVar

import httpx
import msgspec

from backends.remote.peer import PeerRemote
from backends.remote.transport import Answer, Deadline, RemoteClient
from engine.errors import BackendFailure, BackendTimeout

__all__ = ["RunpodClient", "RunpodRemote"]

log = logging.getLogger(__name__)

# RunPod's /runsync waits at most this long for a result before answering IN_QUEUE.
_RUNSYNC_WAIT_MS = (1000, 300_000)
# First pause between status polls, doubling up to the cap.
_POLL_FIRST_S = 0.25
_POLL_CAP_S = 2.0
_CANCEL_TIMEOUT_S = 5.0
_RUNNING = frozenset({"IN_QUEUE", "IN_PROGRESS"})
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# The SDK's own report of an exception in a handler: keep the message, not the traceback.
_SDK_ERROR_KEYS = ("error_message", "error_type")


class _Job(msgspec.Struct):
    id: str = ""
    status: str = ""
    output: msgspec.Raw = msgspec.Raw(b"null")
    error: Any = None


class RunpodRemote(PeerRemote):
    kind = "runpod"
    name = "bge-runpod-worker on RunPod"


class RunpodClient(RemoteClient):
    """A RemoteClient whose requests run as RunPod jobs; answers come back as the routes'."""

    # An endpoint scaled to zero answers its first job after a cold start: a probe may
    # take the call's whole deadline (REMOTE_TIMEOUT_S).
    probe_timeout_s: ClassVar[float] = math.inf

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._cancels: set[asyncio.Future[None]] = set()

    async def _send(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        deadline: Deadline,
        *,
        cache: bool = True,
    ) -> Answer:
        route = msgspec.json.encode(path)
        if payload is None:
            job = b'{"input":{"route":' + route + b',"method":"GET"}}'
        else:
            job = b'{"input":{"route":' + route + b',"body":' + payload + b"}}"
        answer = await super()._send("POST", self._runsync(deadline), job, deadline)
        running: str | None = None  # the id of a job RunPod has not finished
        polls = 0
        try:
            while True:
                if answer.status != 200:
                    # RunPod's API refused: the transport's table applies, naming the route.
                    return dataclasses.replace(answer, path=path)
                state = self._job(answer, path)
                if state.status not in _RUNNING:
                    return self._outcome(state, path)
                running = state.id
                if deadline.remaining() <= 0:
                    raise TimeoutError
                await asyncio.sleep(
                    min(_POLL_CAP_S, _POLL_FIRST_S * 2.0**polls, deadline.remaining())
                )
                polls += 1
                answer = await super()._send(
                    "GET", f"/status/{running}", None, deadline, cache=False
                )
        except (TimeoutError, httpx.TimeoutException, asyncio.CancelledError):
            # Nobody waits for it any more (the deadline, or the caller went away).
            if running is not None:
                self._give_up(running)
            raise

    def _runsync(self, deadline: Deadline) -> str:
        # Whole seconds: the URL is cached per path, and there are at most 300 of these.
        low, high = _RUNSYNC_WAIT_MS
        wait_ms = min(high, max(low, int(deadline.remaining()) * 1000))
        return f"/runsync?wait={wait_ms}"

    def _job(self, answer: Answer, path: str) -> _Job:
        try:
            job = msgspec.json.decode(answer.content, type=_Job)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BackendFailure(
                f"the RunPod endpoint {self.url} answered a job for {path} with a malformed "
                f"body ({exc})"
            ) from exc
        if job.status in _RUNNING and not _JOB_ID.match(job.id):
            raise BackendFailure(
                f"the RunPod endpoint {self.url} answered a job for {path} without a usable id"
            )
        return job

    def _outcome(self, job: _Job, path: str) -> Answer:
        if job.status == "COMPLETED":
            headers = httpx.Headers({"content-type": "application/json"})
            return Answer(200, headers, bytes(job.output), self.url, path)
        where = f"the RunPod job {job.id} for {path} at {self.url}"
        if job.status == "FAILED":
            return _failed(job.error, where, self.url, path)
        if job.status == "TIMED_OUT":
            raise BackendTimeout(f"{where} ran past the endpoint's execution timeout")
        raise BackendFailure(f"{where} ended {job.status or 'without a status'}")

    def _give_up(self, job_id: str) -> None:
        """Cancel a job nobody waits for any more, without making the caller wait for it."""
        task = asyncio.ensure_future(self._cancel(job_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel(self, job_id: str) -> None:
        try:
            answer = await super()._send(
                "POST", f"/cancel/{job_id}", b"{}", Deadline(_CANCEL_TIMEOUT_S), cache=False
            )
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning("could not cancel RunPod job %s at %s: %s", job_id, self.url, exc)
            return
        if answer.status != 200:
            log.warning(
                "could not cancel RunPod job %s at %s: HTTP %d", job_id, self.url, answer.status
            )


def _failed(error: object, where: str, url: str, path: str) -> Answer:
    """The route's own answer when the worker's error carries it (``worker.jobs``); any
    other error (the SDK's report of an exception, plain text) is a backend failure."""
    detail: object = error
    if isinstance(error, str):
        try:
            detail = msgspec.json.decode(error)
        except msgspec.DecodeError:
            raise BackendFailure(f"{where} failed: {error[:500] or '(no message)'}") from None
    if isinstance(detail, dict) and isinstance(detail.get("http_status"), int):
        status = detail.pop("http_status")
        headers = {"content-type": "application/json"}
        retry_after = detail.pop("retry_after", None)
        if isinstance(retry_after, int):
            headers["retry-after"] = str(retry_after)
        return Answer(status, httpx.Headers(headers), msgspec.json.encode(detail), url, path)
    if isinstance(detail, dict) and all(key in detail for key in _SDK_ERROR_KEYS):
        message = f"{detail['error_type']}: {detail['error_message']}"
    else:
        message = msgspec.json.encode(detail).decode("utf-8", "replace")[:500]
    raise BackendFailure(f"{where} failed: {message}")
