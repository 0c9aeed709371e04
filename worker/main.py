"""``bge-runpod-worker``: read settings as ``bge-serve`` does, load the models, take jobs.

The models load before the SDK asks for the first job, so a cold start ends with
a worker that can answer. The app runs on an event loop of its own, in a thread:
the SDK runs its handlers on its loop (the job poller's, or its local API
server's), and the engine's batcher and remote clients stay on one loop for the
worker's whole life whichever it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import runpod
from runpod.serverless.modules.rp_logger import RunPodLogger

from api.cli import tune_process
from api.logs import configure_logging
from engine.errors import StartupError
from engine.settings import load_settings
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

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._worker.start(), self._loop).result()

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
    # The SDK reads its own flags (--rp_serve_api, --rp_api_port, ...) from sys.argv.
    _, ours = runpod.serverless.parser.parse_known_args(args)
    settings = load_settings(ours)
    configure_logging(settings)
    if not os.environ.get("RUNPOD_LOG_LEVEL"):
        RunPodLogger().set_level(_SDK_LEVEL[settings.log_level])
    tune_process()
    try:
        host = _Host(Worker(settings))
        host.start()
    except StartupError as exc:
        print(f"bge-runpod-worker: {exc}", file=sys.stderr)
        return 1
    log.info("models loaded; taking jobs (%d at once)", settings.runpod_concurrency)
    runpod.serverless.start({"handler": host.handler, "concurrency_modifier": host.concurrency})
    host.stop(settings.shutdown_timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
