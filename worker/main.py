"""``bge-runpod-worker``: read settings as ``bge-serve`` does, load the models, take jobs.

The models load before the SDK asks for the first job, so a cold start ends with
a worker that can answer; the SDK (~2 s of imports) is imported while they load.
The app runs on an event loop of its own, in a thread: the SDK runs its handlers
on its loop (the job poller's, or its local API server's), and the engine's
batcher and remote clients stay on one loop for the worker's whole life
whichever it is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from api.cli import tune_process
from api.logs import configure_logging
from engine.errors import StartupError
from engine.settings import load_settings_and_rest
from worker.service import Worker

__all__ = ["main"]

log = logging.getLogger(__name__)

# The SDK logs every job's whole output at its default level, DEBUG.
_SDK_LEVEL = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR"}


class _Host:
    """A Worker on its own loop and thread; ``handler`` is what the SDK calls."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine", daemon=True)
        self._started: concurrent.futures.Future[None] | None = None

    def begin(self) -> None:
        """Start loading the models; ``wait`` for them."""
        self._thread.start()
        self._started = asyncio.run_coroutine_threadsafe(self._worker.start(), self._loop)

    def wait(self) -> None:
        """Until the models have loaded; StartupError when they cannot be."""
        assert self._started is not None, "begin() first"
        self._started.result()

    def stop(self, timeout: float) -> None:
        """The app's shutdown (the engine's backends close) once the SDK has returned."""
        try:
            asyncio.run_coroutine_threadsafe(self._worker.stop(), self._loop).result(timeout)
        except Exception:  # exiting anyway: say why it was not clean
            log.warning("the engine did not stop cleanly within %g s", timeout, exc_info=True)

    async def handler(self, job: dict[str, Any]) -> Any:
        # Cancelling this (the SDK's timeout) cancels the answer on the engine's loop.
        work = asyncio.run_coroutine_threadsafe(self._worker.answer(job.get("input")), self._loop)
        return await asyncio.wrap_future(work)

    def concurrency(self, _current: int) -> int:
        return self._worker.settings.runpod_concurrency


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # Arguments that are not settings are the SDK's (--rp_serve_api, --rp_api_port, ...);
    # it reads them from sys.argv itself.
    settings, sdk_args = load_settings_and_rest(args)
    configure_logging(settings)
    for deprecated in settings.deprecations():
        log.warning("%s", deprecated)
    tune_process()
    try:
        host = _Host(Worker(settings))
    except StartupError as exc:
        print(f"bge-runpod-worker: {exc}", file=sys.stderr)
        return 2
    host.begin()
    # Imported here, while the models load: the SDK's imports are ~2 s of a cold start.
    import runpod
    from runpod.serverless.modules.rp_logger import RunPodLogger

    _, unknown = runpod.serverless.parser.parse_known_args(sdk_args)
    if unknown:
        print(f"bge-runpod-worker: unrecognized arguments: {' '.join(unknown)}", file=sys.stderr)
        return 2
    if not os.environ.get("RUNPOD_LOG_LEVEL"):
        RunPodLogger().set_level(_SDK_LEVEL[settings.log_level])
    try:
        host.wait()
    except StartupError as exc:
        print(f"bge-runpod-worker: {exc}", file=sys.stderr)
        return 1
    log.info("models loaded; taking jobs (%d at once)", settings.runpod_concurrency)
    # The SDK's local API server (--rp_serve_api) is uvicorn, which drains on SIGTERM and
    # then re-raises it with the handler found at its start back in place: the default
    # one would kill the process by the signal (exit -15) after a clean drain. Set only
    # now, so a SIGTERM while the models load still stops the process at once. The job
    # poller sets its own handlers; the SDK's SIGINT handler exits by SystemExit(0).
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        runpod.serverless.start({"handler": host.handler, "concurrency_modifier": host.concurrency})
    finally:
        host.stop(settings.shutdown_timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
