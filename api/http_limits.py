"""uvicorn's HTTP protocol with the limits uvicorn lacks: a request-read deadline and a
cap on open connections.

uvicorn (httptools) times out idle keep-alive connections, but a connection that
sends half its headers, or a body one byte a minute, stays open forever: a few
hundred such clients exhaust the process's descriptors and ``/health`` stops
answering. Here every request must arrive whole (headers and body) within
``HTTP_READ_TIMEOUT_S`` of its first byte (a new connection: of connecting), or
gets 408 and is disconnected. Past ``MAX_CONNECTIONS`` a new connection first
takes the place of the one that has waited longest on its headers (the likeliest
to be a slow or stalled client), then of the longest idle one; only when every
connection carries a request being read in time or being answered is the new one
refused, fast, with 429 and Retry-After.

The answers written here come before routing, so they are in the OpenAI envelope on
every route (TEI's routes included).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from api.errors import Problem, problem_of, request_timeout_problem
from engine.errors import Overloaded
from engine.settings import Settings

__all__ = ["ConnectionStats", "guarded_protocol"]

log = logging.getLogger(__name__)

_REFUSAL_RETRY_AFTER_S = 1


class _Phase(Enum):
    HEADERS = "headers"  # connected, or a request begun: its headers are not all in
    BODY = "body"  # headers in, the body is still arriving
    BUSY = "busy"  # the request is read; the app is answering it
    IDLE = "idle"  # answered; waiting on keep-alive for the next request


@dataclass(slots=True)
class ConnectionStats:
    """What the protocol did, for ``/metrics`` (plain numbers, read at scrape time)."""

    open: int = 0
    read_timeouts: int = 0
    evicted: int = 0
    refused: int = 0


def guarded_protocol(settings: Settings, stats: ConnectionStats) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, bound to these limits."""
    read_timeout_s = settings.http_read_timeout_s
    max_connections = settings.max_connections

    class GuardedHttpProtocol(_Guarded):
        _read_timeout_s = read_timeout_s
        _max_connections = max_connections
        _stats = stats

    return GuardedHttpProtocol


class _Guarded(HttpToolsProtocol):
    _read_timeout_s: float
    _max_connections: int
    _stats: ConnectionStats

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._phase = _Phase.HEADERS
        self._since = 0.0
        self._read_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._stats.open += 1
        self._reading()
        if len(self.connections) > self._max_connections and not self._make_room():
            self._stats.refused += 1
            log.debug("refused a connection: %d open (MAX_CONNECTIONS)", len(self.connections) - 1)
            self._answer_and_close(
                problem_of(
                    Overloaded(
                        f"the server has {self._max_connections} connections open, all busy "
                        "(MAX_CONNECTIONS); retry shortly",
                        retry_after=_REFUSAL_RETRY_AFTER_S,
                    )
                )
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stats.open -= 1
        self._stop_timer()
        super().connection_lost(exc)

    # httptools parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading()

    def on_headers_complete(self) -> None:
        self._phase = _Phase.BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # An app may answer before it reads the body (a 401, a 413): then the
        # connection is idle once the body is in.
        answered = self.cycle is not None and self.cycle.response_complete
        self._phase = _Phase.IDLE if answered else _Phase.BUSY
        self._stop_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._phase is _Phase.BUSY and not self.pipeline:
            self._phase = _Phase.IDLE
        super().on_response_complete()

    # the limits

    def _reading(self) -> None:
        self._phase = _Phase.HEADERS
        self._since = self.loop.time()
        self._stop_timer()
        self._read_timer = self.loop.call_later(self._read_timeout_s, self._read_timed_out)

    def _stop_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        self._stats.read_timeouts += 1
        log.debug("closing %s: request not read within HTTP_READ_TIMEOUT_S", self._phase.value)
        if self._phase is _Phase.BODY and self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # the app answered without the body; nothing to add
            return
        # In the body phase the app waits on the body; the close makes its receive()
        # return a disconnect, so it stops, and what it sends after goes nowhere.
        self._answer_and_close(request_timeout_problem(self._read_timeout_s))

    def _make_room(self) -> bool:
        """Close one waiting connection so this one fits; False when none is waiting."""
        others = [c for c in self.connections if c is not self and isinstance(c, _Guarded)]
        for phase in (_Phase.HEADERS, _Phase.IDLE):
            waiting = [c for c in others if c._phase is phase and not c.transport.is_closing()]
            if waiting:
                victim = min(waiting, key=lambda c: c._since)
                self._stats.evicted += 1
                log.debug("closing a connection in phase %s to make room", phase.value)
                if phase is _Phase.HEADERS:
                    victim._answer_and_close(request_timeout_problem(victim._read_timeout_s))
                else:
                    victim.transport.close()
                return True
        return False

    def _answer_and_close(self, problem: Problem) -> None:
        self._stop_timer()
        body = msgspec.json.encode(problem.openai_body())
        head = [f"HTTP/1.1 {problem.status.http} {_REASONS[problem.status.http]}"]
        head += [
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        head += [f"{name}: {value}" for name, value in problem.header_items()]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.transport.close()


_REASONS = {408: "Request Timeout", 429: "Too Many Requests"}
