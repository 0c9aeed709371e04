"""uvicorn's HTTP protocol with the limits uvicorn lacks: bounded request heads, a
request-read deadline, a send deadline, one request at a time per connection, and a
cap on open connections.

Ours to keep: it subclasses uvicorn's private ``HttpToolsProtocol`` (uvicorn 0.54 as
pinned in constraints.txt), so a uvicorn upgrade may break it, and
tests/integration/test_http_limits.py and test_slow_clients.py are what say so.
Retire it when the server underneath offers these limits as settings: uvicorn with a
bound on head size and header count, a send deadline and pipelining held back (or a
server such as hypercorn or granian that has them), answering in our envelope; then
delete this module and set those settings in ``api/cli.py``.

uvicorn (httptools) has no limit on a request head: a client sending header lines
for ever grows memory without bound (a probe took RSS from 506 MB to 8.7 GB in 15 s),
and httptools re-copies a header value at every piece that arrives, so a value that
grows slowly costs quadratic time (16 such sockets stalled ``/health/live`` for
23 s). Here the bytes of a head are kept in one buffer, searched once for the
head's end, and given to the parser whole: past ``HTTP_MAX_REQUEST_LINE_BYTES`` the
answer is 414, past ``HTTP_MAX_HEADER_BYTES`` or ``HTTP_MAX_HEADERS`` 431, and two
``Host`` headers are a 400; after each the connection is half-closed, what the
client still sends is read and dropped (1 MiB, 1 s at most, so it can read the
answer), then it is closed.

uvicorn also parses every request a client pipelines, each held in memory until its
turn. Here the next request's head goes to the parser only once the answer before it
is complete; until then the connection stops reading. A body is given to the parser
up to its end and not past it (``Content-Length``, or the chunked framing followed
here), so a new request never starts in the middle of what was fed.

An answer a client does not read waits in the send buffer: uvicorn keeps it, and the
connection, for as long as the client stays. Here a connection whose transport has
paused writing for ``HTTP_WRITE_TIMEOUT_S`` is aborted (its buffer dropped).

Every request must arrive whole (headers and body) within ``HTTP_READ_TIMEOUT_S`` of
its first byte (a new connection: of connecting), or gets 408 and is disconnected.
Past ``MAX_CONNECTIONS`` a new connection first takes the place of the one whose
answer has waited longest (over a second) on a client that does not read, then of
the one that has waited longest on its headers (the likeliest to be a slow or
stalled client), then of the longest idle one; only when every connection carries a
request being read in time or being answered is the new one refused, fast, with 429
and Retry-After.

The answers written here come before routing, so they are in the OpenAI envelope on
every route (TEI's routes included). An HTTP/1.0 request that asks for keep-alive
gets it (uvicorn closes every 1.0 connection).

Why extend uvicorn's httptools protocol rather than change servers: these limits
cost next to nothing, while uvicorn's h11 protocol (whose
``h11_max_incomplete_event_size`` bounds a head's size, but not its header count,
and has no send deadline) costs twice the CPU per request. Same run, one bge-serve
each on a tiny model, 16 closed-loop raw-socket clients, 5 rounds of 4 s, medians
(2 cores shared with other work, load average 7: rounds varied by 10-20 %):

| protocol | GET /health/live req/s | CPU us/req | POST /v1/embeddings req/s | CPU us/req |
|---|---:|---:|---:|---:|
| this module, before issue 19 | 2110 | 308 | 288 | 3410 |
| this module | 2059 | 353 | 281 | 3326 |
| uvicorn httptools, no limits | 2160 | 334 | 215 | 3629 |
| uvicorn h11, no limits | 926 | 561 | 165 | 4028 |

hypercorn and granian have some of these limits as settings, but not the eviction
under ``MAX_CONNECTIONS``, the 408/429/431 answers in our envelope, or the
bind-first start and drain of ``api/cli.py``; none is installed here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httptools
import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from api.errors import Problem, head_problem, problem_of, request_timeout_problem
from engine.errors import Overloaded
from engine.settings import Settings

__all__ = ["ConnectionStats", "guarded_protocol"]

log = logging.getLogger(__name__)

_REFUSAL_RETRY_AFTER_S = 1
# A writer paused this long is stuck, not a fast reader between two reads.
_STUCK_WRITER_S = 1.0
# After a refused head: how much of what the client still sends is dropped, and for
# how long, before the close (a close with unread input resets the connection, and
# the client may lose the answer).
_LINGER_BYTES = 1 << 20
_LINGER_S = 1.0
# A chunk-size line longer than this is not HTTP a client sends.
_MAX_CHUNK_LINE = 4096
_HEAD_END = b"\r\n\r\n"


class _Phase(Enum):
    HEADERS = "headers"  # connected, or a request begun: its headers are not all in
    BODY = "body"  # headers in, the body is still arriving
    BUSY = "busy"  # the request is read; the app is answering it
    IDLE = "idle"  # answered; waiting on keep-alive for the next request
    WRITING = "writing"  # an answer waits on a client that does not read it


@dataclass(slots=True)
class ConnectionStats:
    """What the protocol did, for ``/metrics`` (plain numbers, read at scrape time)."""

    open: int = 0
    read_timeouts: int = 0
    write_timeouts: int = 0
    evicted: int = 0
    refused: int = 0
    heads_refused: int = 0


@dataclass(frozen=True, slots=True)
class _Limits:
    read_timeout_s: float
    write_timeout_s: float
    max_connections: int
    max_header_bytes: int
    max_headers: int
    max_request_line_bytes: int


def guarded_protocol(settings: Settings, stats: ConnectionStats) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, bound to these limits."""
    limits = _Limits(
        read_timeout_s=settings.http_read_timeout_s,
        write_timeout_s=settings.http_write_timeout_s,
        max_connections=settings.max_connections,
        max_header_bytes=settings.http_max_header_bytes,
        max_headers=settings.http_max_headers,
        max_request_line_bytes=settings.http_max_request_line_bytes,
    )

    class GuardedHttpProtocol(_Guarded):
        _limits = limits
        _stats = stats

    return GuardedHttpProtocol


class _Refused(Exception):
    """A request head past a limit, raised where it is found (a parser callback too)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _BadFraming(Exception):
    """A chunked body no client sends (a chunk-size line past ``_MAX_CHUNK_LINE``)."""


class _HeadScan:
    """Where a request head ends in the buffer it arrives in, checked against the
    limits as it grows; each byte is looked at once, whatever the pieces."""

    def __init__(self, limits: _Limits) -> None:
        self._limits = limits
        self.reset()

    def reset(self) -> None:
        self._scanned = 0
        self._lines = 0
        self._line_one = False

    def end(self, buffer: bytearray) -> int:
        """The head's length once it is all in ``buffer``; 0 while it is not."""
        limits = self._limits
        found = buffer.find(_HEAD_END, max(0, self._scanned - 3))
        scan_to = len(buffer) if found < 0 else found + len(_HEAD_END)
        if not self._line_one:
            first = buffer.find(b"\n", self._scanned, scan_to)
            line_length = (first if first >= 0 else scan_to) - 1
            if line_length > limits.max_request_line_bytes:
                raise _Refused(
                    head_problem(
                        414,
                        "the request line is longer than "
                        f"{limits.max_request_line_bytes} bytes (HTTP_MAX_REQUEST_LINE_BYTES)",
                        "request_line_too_long",
                    )
                )
            self._line_one = first >= 0
        self._lines += buffer.count(b"\n", self._scanned, scan_to)
        self._scanned = scan_to
        # The request line's end, then one per header; the blank line ends the head.
        headers = self._lines - 1 - (found >= 0)
        if headers > limits.max_headers:
            raise _Refused(
                head_problem(
                    431,
                    f"the request has more than {limits.max_headers} headers (HTTP_MAX_HEADERS)",
                    "too_many_headers",
                )
            )
        if scan_to > limits.max_header_bytes:
            raise _Refused(
                head_problem(
                    431,
                    "the request's headers are larger than "
                    f"{limits.max_header_bytes} bytes (HTTP_MAX_HEADER_BYTES)",
                    "headers_too_large",
                )
            )
        return 0 if found < 0 else scan_to


class _ChunkedFraming:
    """Where a chunked body ends, so that nothing after it is fed with it (the
    parser checks the framing; this only follows it)."""

    def __init__(self) -> None:
        self._state = "size"  # size line | data | data's CRLF | trailer lines
        self._left = 0

    def take(self, buffer: bytearray) -> tuple[int, bool]:
        """How many bytes from the buffer's start belong to the body, and whether
        that is its end."""
        at = 0
        while at < len(buffer):
            if self._state == "data":
                step = min(self._left, len(buffer) - at)
                at += step
                self._left -= step
                if self._left == 0:
                    self._state = "crlf"
                continue
            line_end = buffer.find(b"\n", at)
            if line_end < 0:
                if len(buffer) - at > _MAX_CHUNK_LINE:
                    raise _BadFraming
                return at, False  # the line's rest has not arrived
            line = bytes(buffer[at:line_end]).strip()
            at = line_end + 1
            if self._state == "size":
                try:
                    self._left = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    return len(buffer), False  # the parser refuses it
                self._state = "data" if self._left else "trailer"
            elif self._state == "crlf":
                self._state = "size"
            elif not line:  # the blank line after the trailers
                return at, True
        return at, False


class _HeldFlow(FlowControl):
    """uvicorn resumes reading whenever the app waits on its body; a connection holding
    bytes it may not parse yet stays paused, and resuming feeds what it holds."""

    def __init__(self, transport: asyncio.Transport, protocol: _Guarded) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        if self._protocol.holding():
            return
        super().resume_reading()
        self._protocol.loop.call_soon(self._protocol.feed)


class _Guarded(HttpToolsProtocol):
    _limits: _Limits
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
        self._write_paused_at: float | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._inbox = bytearray()  # received, not yet given to the parser
        self._head = _HeadScan(self._limits)
        self._in_head = True  # the parser waits on a request head
        self._body_left: int | None = None  # Content-Length still to feed
        self._chunked: _ChunkedFraming | None = None
        self._hosts = 0
        self._feeding = False
        self._lingering = -1  # bytes dropped since a refusal; -1: none refused

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _HeldFlow(transport, self)
        self._stats.open += 1
        self._reading()
        if len(self.connections) > self._limits.max_connections and not self._make_room():
            self._stats.refused += 1
            log.debug("refused a connection: %d open (MAX_CONNECTIONS)", len(self.connections) - 1)
            self._answer_and_close(
                problem_of(
                    Overloaded(
                        f"the server has {self._limits.max_connections} connections open, all "
                        "busy (MAX_CONNECTIONS); retry shortly",
                        retry_after=_REFUSAL_RETRY_AFTER_S,
                    )
                )
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stats.open -= 1
        self._stop_timer()
        self._stop_write_timer()
        self._inbox.clear()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > _LINGER_BYTES:
                self.transport.abort()
            return
        self._unset_keepalive_if_required()
        self._inbox += data
        self.feed()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_paused_at = self.loop.time()
        self._stop_write_timer()
        self._write_timer = self.loop.call_later(
            self._limits.write_timeout_s, self._write_timed_out
        )

    def resume_writing(self) -> None:
        self._write_paused_at = None
        self._stop_write_timer()
        super().resume_writing()

    # feeding the parser

    def holding(self) -> bool:
        """Bytes are held that may not go to the parser yet (reading stays paused)."""
        return bool(self._inbox) and not self._may_feed()

    def _may_feed(self) -> bool:
        if not self._in_head:
            return True
        # One request at a time: the next head waits until this answer is complete.
        return self.cycle is None or self.cycle.response_complete

    def feed(self) -> None:
        """Give the parser what it may take of the held bytes; pause reading if any stay."""
        if self._feeding or self.parser is None or self.transport.is_closing():
            return
        self._feeding = True
        try:
            while self._inbox and self._may_feed() and self._lingering < 0:
                if not self._feed_step():
                    break
        except _Refused as refusal:
            self._refuse(refusal.problem)
        except _BadFraming:
            # The app may be reading this body: no answer can be written in between,
            # so the connection goes, and the app sees the client leave.
            log.debug("aborting a connection: a chunk-size line is too long")
            self.transport.abort()
        finally:
            self._feeding = False
        if self.holding():
            self.flow.pause_reading()

    def _feed_step(self) -> bool:
        """Feed one head, or some of a body; False when more bytes must arrive first."""
        inbox = self._inbox
        if self._in_head:
            if self._phase is not _Phase.HEADERS:
                self._reading()  # the next request's first byte is here
            length = self._head.end(inbox)
            if not length:
                return False
            self._head.reset()
        elif self._chunked is not None:
            length, _ = self._chunked.take(inbox)
            if not length:
                return False
        elif self._body_left is not None:
            length = min(self._body_left, len(inbox))
        else:
            length = len(inbox)
        piece = bytes(inbox[:length])
        del inbox[:length]
        self._parse(piece)
        return True

    def _parse(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                raise exc.__context__ from None
            self._bad_request()
        except httptools.HttpParserError:
            self._bad_request()
        except httptools.HttpParserUpgrade:
            self._inbox.clear()
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self._inbox.clear()
        self.send_400_response(msg)

    # httptools parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._hosts = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if name.lower() == b"host":
            self._hosts += 1

    def on_headers_complete(self) -> None:
        if self._hosts > 1:
            raise _Refused(
                head_problem(400, "the request has more than one Host header", "malformed_request")
            )
        self._phase = _Phase.BODY
        self._in_head = False
        self._chunked = None
        self._body_left = None
        for name, value in self.headers:
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = _ChunkedFraming()
            elif name == b"content-length" and value.strip().isdigit():
                self._body_left = int(value)
        super().on_headers_complete()
        if self.scope.get("http_version") == "1.0" and self.cycle is not None:
            self._keep_1_0_alive()

    def on_body(self, body: bytes) -> None:
        if self._body_left is not None:
            self._body_left -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        # An app may answer before it reads the body (a 401, a 413): then the
        # connection is idle once the body is in.
        answered = self.cycle is not None and self.cycle.response_complete
        self._phase = _Phase.IDLE if answered else _Phase.BUSY
        self._in_head = True
        self._chunked = None
        self._body_left = None
        self._stop_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._phase is _Phase.BUSY and not self.pipeline:
            self._phase = _Phase.IDLE
        super().on_response_complete()
        if self.transport.is_closing():
            self._bound_close()
        elif self._inbox:
            self.feed()

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._bound_close()

    def _keep_1_0_alive(self) -> None:
        """uvicorn closes every HTTP/1.0 connection; one that asks to stay open does."""
        tokens = [
            token.strip().lower()
            for name, value in self.headers
            if name == b"connection"
            for token in value.split(b",")
        ]
        if b"keep-alive" in tokens and b"close" not in tokens:
            cycle = self.cycle
            cycle.keep_alive = True
            cycle.default_headers = [*cycle.default_headers, (b"connection", b"keep-alive")]

    # the limits

    def _state(self) -> _Phase:
        return _Phase.WRITING if self._write_paused_at is not None else self._phase

    def _reading(self) -> None:
        self._unset_keepalive_if_required()
        self._phase = _Phase.HEADERS
        self._since = self.loop.time()
        self._stop_timer()
        self._read_timer = self.loop.call_later(self._limits.read_timeout_s, self._read_timed_out)

    def _stop_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        self._stats.read_timeouts += 1
        log.debug("closing %s: request not read within HTTP_READ_TIMEOUT_S", self._phase.value)
        if self._phase is _Phase.BODY and self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # the app answered without the body; nothing to add
            self._bound_close()
            return
        # In the body phase the app waits on the body; the close makes its receive()
        # return a disconnect, so it stops, and what it sends after goes nowhere.
        self._answer_and_close(request_timeout_problem(self._limits.read_timeout_s))

    def _write_timed_out(self) -> None:
        self._write_timer = None
        self._stats.write_timeouts += 1
        log.debug("aborting a connection: its answer unread for HTTP_WRITE_TIMEOUT_S")
        self.transport.abort()

    def _bound_close(self) -> None:
        """A closing transport flushes its buffer first: a client that does not read
        would keep it open for ever, so the send deadline applies to the close too."""
        if self.transport.get_write_buffer_size() and self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self._limits.write_timeout_s, self._write_timed_out
            )

    def _make_room(self) -> bool:
        """Close one waiting connection so this one fits; False when none is waiting."""
        others = [
            c
            for c in self.connections
            if c is not self and isinstance(c, _Guarded) and not c.transport.is_closing()
        ]
        now = self.loop.time()
        stuck = [
            c
            for c in others
            if c._lingering >= 0  # refused, its answer written: only waiting to close
            or (c._write_paused_at is not None and now - c._write_paused_at >= _STUCK_WRITER_S)
        ]
        if stuck:
            victim = min(stuck, key=lambda c: c._write_paused_at or 0.0)
            self._stats.evicted += 1
            log.debug("aborting a connection whose answer is not read, to make room")
            victim.transport.abort()
            return True
        for phase in (_Phase.HEADERS, _Phase.IDLE):
            waiting = [c for c in others if c._state() is phase]
            if waiting:
                victim = min(waiting, key=lambda c: c._since)
                self._stats.evicted += 1
                log.debug("closing a connection in phase %s to make room", phase.value)
                if phase is _Phase.HEADERS:
                    victim._answer_and_close(request_timeout_problem(victim._limits.read_timeout_s))
                else:
                    victim.transport.close()
                    victim._bound_close()
                return True
        return False

    def _answer(self, problem: Problem) -> None:
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

    def _answer_and_close(self, problem: Problem) -> None:
        self._answer(problem)
        self.transport.close()
        self._bound_close()

    def _refuse(self, problem: Problem) -> None:
        """Answer a refused head, stop sending, drop what still comes for a moment."""
        self._stats.heads_refused += 1
        log.debug("refused a request head: %s", problem.message)
        self._inbox.clear()
        self._answer(problem)
        if not self.transport.can_write_eof():
            self.transport.close()
            self._bound_close()
            return
        self.transport.write_eof()
        self._lingering = 0
        self.transport.resume_reading()  # the client's EOF closes it sooner
        self.loop.call_later(_LINGER_S, self._end_linger)

    def _end_linger(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
            self._bound_close()


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
}
