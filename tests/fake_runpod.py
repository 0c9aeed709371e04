"""RunPod's side of a deployed worker: the job queue the SDK's JobScaler polls.

A worker on RunPod (not ``--rp_serve_api``) takes jobs from
``RUNPOD_WEBHOOK_GET_JOB`` (``/job-take/<worker>``, or ``/job-take-batch/`` with
``batch_size`` when it has room for more than one), long-polls ``/job-stop/`` for
jobs to stop, and posts each result to ``RUNPOD_WEBHOOK_POST_OUTPUT``. This plays
those URLs on a loopback port so a test runs the SDK's production loop, with the
worker's concurrency_modifier, against a queue it fills.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeRunPod", "serve"]

# How long an empty job-take or job-stop poll is held, as RunPod holds them.
_HOLD_S = 0.5


class FakeRunPod:
    def __init__(self) -> None:
        self.queue: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self.takes: list[tuple[int, int]] = []  # (batch_size asked, jobs given)
        self._lock = threading.Condition()

    def put(self, *jobs: dict[str, Any]) -> None:
        with self._lock:
            self.queue.extend(jobs)
            self._lock.notify_all()

    def wait_results(self, count: int, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.results) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.results)} of {count} results after {timeout} s")
                self._lock.wait(left)
            return dict(self.results)

    def env(self, url: str) -> Mapping[str, str]:
        """The variables RunPod sets in a worker's container, pointing here."""
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{url}/job-take/$ID?token=t",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{url}/job-done/$RUNPOD_POD_ID/$ID?token=t",
            "RUNPOD_POD_ID": "worker-1",
            # Offline, on a CPU: the SDK's start-up checks would look for a GPU and the net.
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
        }

    def take(self, batch: int | None) -> list[dict[str, Any]]:
        with self._lock:
            if not self.queue:
                self._lock.wait(_HOLD_S)
            given = self.queue[: batch or 1]
            del self.queue[: len(given)]
            if given:
                self.takes.append((batch or 1, len(given)))
            return given

    def done(self, job_id: str, result: Any) -> None:
        with self._lock:
            self.results[job_id] = result
            self._lock.notify_all()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        fake = self.server.fake
        if url.path.startswith("/job-stop/"):
            time.sleep(_HOLD_S)
            self._answer(204, None)
        elif url.path.startswith("/job-take-batch/"):
            batch = int(parse_qs(url.query)["batch_size"][0])
            jobs = fake.take(batch)
            self._answer(200 if jobs else 204, jobs or None)
        elif url.path.startswith("/job-take/"):
            jobs = fake.take(None)
            self._answer(200 if jobs else 204, jobs[0] if jobs else None)
        else:
            self._answer(404, {"error": "no such route"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if url.path.startswith("/job-done/"):
            self.server.fake.done(url.path.rsplit("/", 1)[1], json.loads(body))
            self._answer(200, {})
        else:
            self._answer(404, {"error": "no such route"})

    def _answer(self, status: int, body: Any) -> None:
        content = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if content:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeRunPod) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


@contextmanager
def serve(fake: FakeRunPod) -> Iterator[str]:
    server = _Server(fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
