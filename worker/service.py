"""The worker's service: the same engine and app as ``bge-serve``, answering jobs."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import msgspec

from api.app import create_app
from api.errors import problem_of
from backends import build_chains
from engine.errors import InputTooLarge, InvalidInput, StartupError
from engine.inference import InferenceEngine
from engine.settings import Settings
from worker.asgi import InProcessApp
from worker.jobs import call_of, failure, output_of

__all__ = ["Worker"]

log = logging.getLogger(__name__)

# How often start() looks whether the models have loaded.
_LOAD_POLL_S = 0.05


class Worker:
    """Built from settings as ``bge-serve`` builds itself; ``answer`` takes a job's input."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = InferenceEngine(settings, build_chains(settings))
        # RunPod authenticates callers before a job exists; the app's own key check
        # (API_KEY) is met here so one settings file serves bge-serve and the worker.
        headers = [("authorization", f"Bearer {settings.api_key[0]}")] if settings.api_key else []
        self._app = InProcessApp(create_app(settings, self.engine), headers)

    async def start(self) -> None:
        """Load the models; StartupError when they cannot be (as ``bge-serve`` exits then)."""
        await self._app.start()
        while (health := self.engine.health()).status == "loading":
            await asyncio.sleep(_LOAD_POLL_S)
        if health.error is not None:
            raise StartupError(health.error)

    async def stop(self) -> None:
        await self._app.stop()

    async def answer(self, job_input: object) -> Any:
        """The job's output; never raises, since the SDK would send a raised exception on
        to the caller as the job's error, traceback and server paths included."""
        try:
            call = call_of(job_input)
        except (InvalidInput, RecursionError) as exc:  # a 422, or a 400 for deep nesting,
            return _refusal(exc)  # as a body of the wrong shape gets over HTTP
        except Exception as exc:
            log.exception("reading a job's input failed")
            return _refusal(exc)
        try:
            reply = await self._app.request(call.method, call.route, call.body)
            return self._returnable(output_of(call, reply), len(reply.body))
        except Exception as exc:
            log.exception("job for %s %r failed", call.method, call.route)
            return _refusal(exc)

    def _returnable(self, output: Any, answer_bytes: int) -> Any:
        """``output``, or a 413 where RunPod would refuse to take it back from the worker."""
        limit = self.settings.runpod_max_output_mb * 1_000_000
        # The SDK sends the output on as json.dumps writes it, which is larger than the
        # route's compact JSON (", " between numbers); it is measured only near the limit.
        if answer_bytes < limit / 2:
            return output
        size = len(json.dumps({"output": output}, ensure_ascii=False).encode("utf-8"))
        if size <= limit:
            return output
        return _refusal(
            InputTooLarge(
                f"the answer would be {size / 1e6:.3g} MB, over the {limit / 1e6:g} MB a job may "
                "return (RUNPOD_MAX_OUTPUT_MB, RunPod's limit): send fewer or shorter texts per "
                'job, or ask for "encoding_format": "base64"'
            )
        )


def _refusal(exc: Exception) -> dict[str, str]:
    """The failed job the API's error table makes of ``exc`` (a bug: 500, no details)."""
    problem = problem_of(exc)
    return failure(msgspec.to_builtins(problem.openai_body()), problem.status.http)
