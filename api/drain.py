"""The answer to a request the drain deadline cuts short: 503 with Retry-After, in its dialect.

On SIGTERM or SIGINT uvicorn stops accepting, waits ``SHUTDOWN_TIMEOUT_S`` for the
requests it has, then cancels the tasks still answering them. Left alone, that
CancelledError reaches uvicorn, which logs a traceback for each request and answers
a plain-text 500 the clients cannot tell from a bug. Here it becomes the refusal a
client can act on (this instance is going away; retry, and another one answers), in
the body the route's dialect uses for every other error: TEI's on TEI's routes
(the bare ``/rerank`` included when the body spoke TEI), OpenAI's elsewhere.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_of, tei_error
from api.metrics import DIALECT_KEY
from engine.errors import EngineError, Unavailable

__all__ = ["DrainAnswer"]

log = logging.getLogger(__name__)

# The process is stopping; under an orchestrator another replica takes the retry at once.
_RETRY_AFTER_S = 1


class DrainAnswer(ASGIMiddleware):
    """Answers 503 for a request cancelled before its response began."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, shutdown_timeout_s: int) -> None:
        self._shutdown_timeout_s = shutdown_timeout_s

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await next_app(scope, receive, sending)
        except asyncio.CancelledError:
            # uvicorn cancels a request only when the drain deadline passes (a client that
            # leaves is handled in api/disconnect.py; in the RunPod worker, the SDK cancels
            # a job past its timeout, and nobody reads this answer); the task ends here.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            what = f"{scope.get('method')} {scope['path']}"
            if started:
                # Half an answer cannot be taken back: uvicorn closes the connection.
                log.warning("%s was cancelled mid-answer", what)
                return
            log.warning("%s was cancelled before its answer was ready: answered 503", what)
            await self._answer(scope, send)

    async def _answer(self, scope: Scope, send: Send) -> None:
        problem = problem_of(
            Unavailable(
                "the service is shutting down and this request did not finish within "
                f"{self._shutdown_timeout_s} s (SHUTDOWN_TIMEOUT_S); retry it",
                retry_after=_RETRY_AFTER_S,
            )
        )
        body: msgspec.Struct
        if _speaks_tei(scope):
            status, body = problem.status.tei_http, problem.tei_body()
        else:
            status, body = problem.status.http, problem.openai_body()
        encoded = msgspec.json.encode(body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(encoded)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in problem.header_items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": encoded, "more_body": False})


def _speaks_tei(scope: Scope) -> bool:
    """Whether the route answers its errors in TEI's body, as its own handler would."""
    if scope.get(DIALECT_KEY) == "TEI":  # the bare /rerank, told by its body
        return True
    route_handler = scope.get("route_handler")
    resolve = getattr(route_handler, "resolve_exception_handlers", None)
    return callable(resolve) and resolve().get(EngineError) is tei_error
