"""The service's routes called in process: one ASGI request per job, no socket.

The worker answers exactly what the HTTP route would because it runs the same
Litestar app, middleware and error handlers included; only the transport
differs. The app's lifespan (which loads the models) is driven here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from litestar import Litestar
from litestar.types import Receive, Scope, Send

__all__ = ["InProcessApp", "Reply"]

_ASGI = {"version": "3.0", "spec_version": "2.3"}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class InProcessApp:
    """Requests to ``app`` as if they came over HTTP, with ``headers`` on each."""

    def __init__(self, app: Litestar, headers: Sequence[tuple[str, str]] = ()) -> None:
        self._app = app
        self._headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        self._lifespan: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Run the app's start-up (which begins loading the models); raises if it fails."""
        started: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        sent_startup = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_startup
            if not sent_startup:
                sent_startup = True
                return {"type": "lifespan.startup"}
            await self._stopping.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"].startswith("lifespan.startup") and not started.done():
                started.set_result(message)

        scope = cast("Scope", {"type": "lifespan", "asgi": _ASGI, "state": {}})
        self._lifespan = asyncio.create_task(
            self._app(scope, cast("Receive", receive), cast("Send", send)), name="lifespan"
        )
        message = await started
        if message["type"] == "lifespan.startup.failed":
            raise RuntimeError(message.get("message") or "the app's start-up failed")

    async def stop(self) -> None:
        self._stopping.set()
        if self._lifespan is not None:
            await self._lifespan

    async def request(self, method: str, target: str, body: bytes | None = None) -> Reply:
        path, _, query = _as_received(target).partition("?")
        headers = list(self._headers)
        if body is not None:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ]
        scope = cast(
            "Scope",
            {
                "type": "http",
                "asgi": _ASGI,
                "http_version": "1.1",
                "method": method,
                "scheme": "http",
                "path": path,
                "raw_path": path.encode("utf-8"),
                "root_path": "",
                "query_string": query.encode("utf-8"),
                "headers": headers,
                "client": ("127.0.0.1", 0),
                "server": ("127.0.0.1", 0),
                "state": {},
            },
        )
        delivered = False
        # A job has no connection to lose: after its body, receive() waits for good (the
        # routes' disconnect watch is cancelled once the answer is ready).
        never: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body or b"", "more_body": False}
            return await never

        status = 500
        reply_headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    reply_headers[bytes(name).decode("latin-1").lower()] = bytes(value).decode(
                        "latin-1"
                    )
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        try:
            await self._app(scope, cast("Receive", receive), cast("Send", send))
        finally:
            never.cancel()
        return Reply(status, reply_headers, b"".join(chunks))


def _as_received(target: str) -> str:
    """``target`` as a server reads it off the wire, where a lone surrogate (which a job's
    JSON can carry, and no client can send as UTF-8) arrives as replacement characters:
    a route named with one is no route here, a 404 as over HTTP."""
    return target.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
