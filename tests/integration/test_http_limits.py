"""Limits at the HTTP layer, before authentication: request heads bounded in size and
count (431/414, then the connection closes), no quadratic re-copying of a growing
header, a send deadline for a peer that does not read, stuck writers evictable under
MAX_CONNECTIONS, a bound on pipelining, one Host header, HTTP/1.0 keep-alive (live
server with API_KEY set, raw sockets, RSS from /proc)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ModelDirs, Server, start_server, stop_server

MAX_HEADER_BYTES = 8192
MAX_HEADERS = 32
MAX_REQUEST_LINE_BYTES = 2048
WRITE_TIMEOUT_S = 4.0
MAX_CONNECTIONS = 20
KEY = "sesame"
BUNDLE = "/docs/assets/swagger-ui-bundle.js"  # an open route, about 1 MB


@pytest.fixture(scope="module")
def limited(models: ModelDirs) -> Iterator[Server]:
    live = start_server(
        models,
        {
            "API_KEY": KEY,
            "HTTP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
            "HTTP_MAX_HEADERS": str(MAX_HEADERS),
            "HTTP_MAX_REQUEST_LINE_BYTES": str(MAX_REQUEST_LINE_BYTES),
            "HTTP_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S),
            "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            # Long enough that no reproducer is cut short by the read deadline instead.
            "HTTP_READ_TIMEOUT_S": "60",
        },
    )
    yield live
    stop_server(live)


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _reset_peak(pid: int) -> int:
    """Start a new high-water mark (``clear_refs`` 5); the RSS it starts from, in kB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid)["VmRSS"]


def _peak_growth_mb(pid: int, start_kb: int) -> float:
    return (_status(pid)["VmHWM"] - start_kb) / 1024


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def _flood(port: int, head: bytes, pieces: Iterator[bytes], timeout: float) -> bytes:
    """Send ``head`` then ``pieces`` as fast as the server takes them, reading all the
    while, and stop sending once an answer comes (as a careful client does); what the
    server sent until it closed (a reset after its answer counts as closed)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    received = bytearray()

    async def send() -> None:
        try:
            await loop.sock_sendall(sock, head)
            for piece in pieces:
                if received:
                    return
                await loop.sock_sendall(sock, piece)
        except OSError:
            pass  # the server closed: what it answered is in ``received``

    async def receive() -> None:
        try:
            while chunk := await loop.sock_recv(sock, 65536):
                received.extend(chunk)
        except OSError:
            pass

    sender = asyncio.create_task(send())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(receive(), timeout)
    sender.cancel()
    sock.close()
    return bytes(received)


def _assert_refused(answer: bytes, status: int, setting: str) -> None:
    assert answer, "no answer before the close (or the timeout)"
    code, headers, body = _parse(answer)
    assert code == status, answer[:300]
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert setting in error["message"]
    assert error["type"] == "invalid_request_error"


GET_LIVE = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def test_endless_small_headers_get_431_with_flat_rss(limited: Server) -> None:
    """The probe's 50-byte headers for ever: 431 once past the limits, RSS flat."""
    start = _reset_peak(limited.process.pid)
    line = b"X-Flood-" + b"f" * 30 + b": " + b"v" * 8 + b"\r\n"  # 50 bytes
    batch = line * 1000
    pieces = (batch for _ in range(1200))  # 60 MB at most, if never cut off
    answer = asyncio.run(_flood(_port(limited), GET_LIVE, pieces, timeout=20))
    _assert_refused(answer, 431, "HTTP_MAX_HEADER")
    assert _peak_growth_mb(limited.process.pid, start) < 30


def test_100000_headers_get_431(limited: Server) -> None:
    many = b"".join(b"X-%d: v\r\n" % i for i in range(100_000)) + b"\r\n"
    answer = asyncio.run(_flood(_port(limited), GET_LIVE, iter([many]), timeout=20))
    _assert_refused(answer, 431, "HTTP_MAX_HEADERS")


def test_one_16_mb_header_gets_431_with_flat_rss(limited: Server) -> None:
    start = _reset_peak(limited.process.pid)
    value = b"x" * (1 << 20)
    pieces = iter([b"X-Big: ", *([value] * 16), b"\r\n\r\n"])
    answer = asyncio.run(_flood(_port(limited), GET_LIVE, pieces, timeout=20))
    _assert_refused(answer, 431, "HTTP_MAX_HEADER_BYTES")
    assert _peak_growth_mb(limited.process.pid, start) < 30


def test_a_long_request_line_gets_414(limited: Server) -> None:
    line = b"GET /health/live?q=" + b"q" * (4 * MAX_REQUEST_LINE_BYTES) + b" HTTP/1.1\r\n"
    answer = asyncio.run(
        _flood(_port(limited), line, iter([b"Host: 127.0.0.1\r\n\r\n"]), timeout=20)
    )
    _assert_refused(answer, 414, "HTTP_MAX_REQUEST_LINE_BYTES")


def test_a_head_within_the_limits_is_served(limited: Server) -> None:
    """Just under every limit, in small pieces: answered as usual."""
    headers = [b"X-%d: %s\r\n" % (i, b"v" * 150) for i in range(MAX_HEADERS - 2)]
    request = GET_LIVE + b"".join(headers) + b"\r\n"
    assert len(request) < MAX_HEADER_BYTES
    pieces = (request[i : i + 7] for i in range(0, len(request), 7))

    async def trickle() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(limited))
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        answer = await reader.readuntil(b"}")
        writer.close()
        return answer

    assert _parse(asyncio.run(trickle()))[0] == 200


def test_growing_headers_do_not_stall_health(limited: Server) -> None:
    """16 sockets, each growing one header value: all cut off at the limit, and
    /health/live answers in time throughout (no quadratic re-copying)."""

    async def grow(port: int) -> bytes:
        pieces = (b"g" * 512 for _ in range(40_000))  # 20 MB each, if never cut off
        return await _flood(port, GET_LIVE + b"X-Grow: ", pieces, timeout=15)

    async def probe(url: str, until: asyncio.Future[list[bytes]]) -> list[float]:
        took = []
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while not until.done():
                began = time.monotonic()
                assert (await client.get("/health/live")).status_code == 200
                took.append(time.monotonic() - began)
                await asyncio.sleep(0.05)
        return took

    async def run() -> tuple[list[bytes], list[float]]:
        growers = asyncio.gather(*(grow(_port(limited)) for _ in range(16)))
        task = asyncio.ensure_future(growers)
        took = await probe(limited.url, task)
        return await task, took

    answers, took = asyncio.run(run())
    for answer in answers:
        _assert_refused(answer, 431, "HTTP_MAX_HEADER_BYTES")
    assert max(took) < 1.0, max(took)


def _non_reading(port: int, path: str, times: int) -> socket.socket:
    """A socket that pipelines ``times`` GETs of ``path`` and does not read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() * times)
    return sock


def test_non_reading_clients_make_room_for_health_and_keyed_clients(limited: Server) -> None:
    """More than MAX_CONNECTIONS sockets pipelining the 1 MB docs bundle, never reading:
    the stuck writers are evicted, so /health/live and a keyed request get in at once
    (not 429 "all busy"), long before the send deadline."""
    stuck = [_non_reading(_port(limited), BUNDLE, 8) for _ in range(MAX_CONNECTIONS + 2)]
    try:
        time.sleep(1.5)  # their answers fill the buffers; they are stuck
        began = time.monotonic()
        live = httpx.get(f"{limited.url}/health/live", timeout=5)
        keyed = httpx.post(
            f"{limited.url}/v1/embeddings",
            json={"input": ["let me in"]},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        took = time.monotonic() - began
    finally:
        for sock in stuck:
            sock.close()
    assert live.status_code == 200, live.text
    assert keyed.status_code == 200, keyed.text
    assert took < WRITE_TIMEOUT_S


def test_a_peer_that_does_not_read_is_closed_after_the_send_deadline(limited: Server) -> None:
    """16 pipelined 1 MB answers, not read for longer than HTTP_WRITE_TIMEOUT_S: the
    connection is closed, so the rest of the answers are not kept for it."""
    sock = _non_reading(_port(limited), BUNDLE, 16)
    try:
        time.sleep(WRITE_TIMEOUT_S + 1.5)
        sock.settimeout(10)
        received = 0
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    finally:
        sock.close()
    size = len(httpx.get(f"{limited.url}{BUNDLE}", timeout=10).content)
    # Closed early: what reached the kernel's buffers before the close, not 16 answers.
    assert received < 8 * size
    assert _closed_counts(limited)["write_timeout"] >= 1


def test_pipelined_requests_are_bounded_and_all_answered(limited: Server) -> None:
    """20,000 requests pipelined in one go, not read for a while: the server parses
    one at a time, not all of them into memory (flat RSS), and answers every one, in
    order."""
    count = 20_000
    pid = limited.process.pid
    start = _reset_peak(pid)
    request = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-N: %d\r\n\r\n"

    async def pipeline() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(limited))
        writer.write(b"".join(request % i for i in range(count)))
        await asyncio.sleep(2)
        answered = 0
        async with asyncio.timeout(60):
            while answered < count:
                await reader.readuntil(b'{"status":"alive"}')
                answered += 1
        writer.close()
        return answered

    assert asyncio.run(pipeline()) == count
    assert _peak_growth_mb(pid, start) < 20


@pytest.mark.parametrize("piece", [0, 1], ids=["one-write", "byte-by-byte"])
def test_pipelined_bodies_end_where_they_say(limited: Server, piece: int) -> None:
    """A Content-Length body, a chunked body (with a trailer) and a GET, pipelined in
    one write or a byte at a time: each body is fed up to its end, so the next request
    starts there; three answers."""
    body = json.dumps({"input": ["one"]}).encode()
    chunked = json.dumps({"input": ["two"]}).encode()
    auth = f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n".encode()
    stream = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
        + b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (5, chunked[:5])
        + b"%x;ext=1\r\n%s\r\n" % (len(chunked) - 5, chunked[5:])
        + b"0\r\nX-Trailer: t\r\n\r\n"
        + GET_LIVE
        + b"\r\n"
    )

    async def pipeline() -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(limited))
        for at in range(0, len(stream), piece or len(stream)):
            writer.write(stream[at : at + (piece or len(stream))])
            await writer.drain()
        statuses = []
        async with asyncio.timeout(20):
            for _ in range(3):
                head = await reader.readuntil(b"\r\n\r\n")
                status, headers, _ = _parse(head)
                await reader.readexactly(int(headers["content-length"]))
                statuses.append(status)
        writer.close()
        return statuses

    assert asyncio.run(pipeline()) == [200, 200, 200]


def test_two_host_headers_get_400(limited: Server) -> None:
    request = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n"
    answer = asyncio.run(_flood(_port(limited), request, iter([]), timeout=10))
    code, headers, body = _parse(answer)
    assert code == 400
    assert headers["connection"] == "close"
    assert "Host" in json.loads(body)["error"]["message"]


def test_http_1_0_keep_alive_is_honoured(limited: Server) -> None:
    request = b"GET /health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"

    async def twice() -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(limited))
        answers = []
        for _ in range(2):
            writer.write(request)
            await writer.drain()
            async with asyncio.timeout(5):
                answers.append(await reader.readuntil(b"}"))
        writer.close()
        return answers

    for answer in asyncio.run(twice()):
        code, headers, _ = _parse(answer)
        assert code == 200
        assert headers["connection"] == "keep-alive"


def test_http_1_0_without_keep_alive_closes(limited: Server) -> None:
    request = b"GET /health/live HTTP/1.0\r\n\r\n"
    answer = asyncio.run(_flood(_port(limited), request, iter([]), timeout=10))
    assert _parse(answer)[0] == 200  # and the server closed: _flood returned


def test_limits_leave_no_error_in_the_log_or_5xx(limited: Server) -> None:
    log = limited.log.read_text()
    assert "ERROR" not in log
    assert "Traceback" not in log
    answered = [
        line
        for line in httpx.get(f"{limited.url}/metrics").text.splitlines()
        if line.startswith("bge_http_requests_total{")
    ]
    assert not any('status="5' in line and "/health" not in line for line in answered), answered


def _closed_counts(server: Server) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("bge_http_connections_closed_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts
