"""Slow, stalled and idle clients are cut off; past MAX_CONNECTIONS the stalled ones make
room, so the service keeps answering (live server, raw sockets)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ModelDirs, Server, start_server, stop_server

READ_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 12


@pytest.fixture(scope="module")
def guarded(models: ModelDirs) -> Iterator[Server]:
    live = start_server(
        models,
        {
            "HTTP_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
            "HTTP_KEEPALIVE_S": "1",
            "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        },
    )
    yield live
    stop_server(live)


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


BODY = json.dumps({"input": ["a slow client"]}).encode()
HEAD = (
    "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(BODY)}\r\n\r\n"
).encode()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """The whole answer up to the server's close: status, headers, body."""
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _assert_timed_out(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 408
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout"
    assert "HTTP_READ_TIMEOUT_S" in error["message"]


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connected, said nothing
        HEAD[:30],  # half the headers
        HEAD + BODY[:5],  # all the headers, a little of the body
    ],
    ids=["silent", "half-headers", "half-body"],
)
def test_a_request_not_sent_in_time_gets_408_and_a_close(guarded: Server, sent: bytes) -> None:
    async def stall() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(guarded))
        began = time.monotonic()
        writer.write(sent)
        await writer.drain()
        _assert_timed_out(*await _answer(reader))
        writer.close()
        return time.monotonic() - began

    took = asyncio.run(stall())
    assert READ_TIMEOUT_S * 0.9 <= took < READ_TIMEOUT_S + 4


def test_a_client_sending_in_pieces_within_the_deadline_is_served(guarded: Server) -> None:
    async def trickle() -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(guarded))
        for piece in (HEAD[:20], HEAD[20:], BODY[:3], BODY[3:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(READ_TIMEOUT_S / 8)
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        writer.close()
        return int(status_line.split()[1]), {}, b""

    assert asyncio.run(trickle())[0] == 200


def test_an_idle_keep_alive_connection_is_closed_after_http_keepalive_s(guarded: Server) -> None:
    async def idle() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(guarded))
        writer.write(HEAD + BODY)
        await writer.drain()
        status_line = await reader.readline()
        assert b" 200 " in status_line
        await reader.readuntil(b"\r\n\r\n")
        answered = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), timeout=10)  # the body, then EOF
        assert rest.startswith(b"{")
        writer.close()
        return time.monotonic() - answered

    assert 0.9 <= asyncio.run(idle()) < 4


def test_stalled_connections_make_room_so_health_answers(guarded: Server) -> None:
    """Twice MAX_CONNECTIONS half-sent requests: each new connection closes the one
    stalled longest, and /health is answered throughout."""

    async def flood() -> list[int]:
        port = _port(guarded)
        stalled = []
        for _ in range(2 * MAX_CONNECTIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEAD[:30])
            await writer.drain()
            stalled.append((reader, writer))
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=guarded.url, timeout=5) as client:
            health = [(await client.get("/health")).status_code for _ in range(3)]
        # The first connections were closed to make room, each with a 408.
        _assert_timed_out(*await _answer(stalled[0][0]))
        for _, writer in stalled:
            writer.close()
        return health

    assert asyncio.run(flood()) == [200, 200, 200]
    closed = _closed_counts(guarded)
    assert closed["evicted"] >= MAX_CONNECTIONS


def test_past_max_connections_all_busy_a_new_one_gets_429_fast(guarded: Server) -> None:
    """Connections in the middle of sending a body are not evicted (they are on time);
    with MAX_CONNECTIONS of them, the next connection is refused at once."""

    async def busy() -> tuple[int, dict[str, str], bytes, float]:
        port = _port(guarded)
        reading = []
        for _ in range(MAX_CONNECTIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEAD + BODY[:5])
            await writer.drain()
            reading.append(writer)
        await asyncio.sleep(0.1)
        began = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await _answer(reader)
        took = time.monotonic() - began
        for each in (*reading, writer):
            each.close()
        return (*answer, took)

    status, headers, body, took = asyncio.run(busy())
    assert status == 429
    assert headers["retry-after"] == "1"
    assert "MAX_CONNECTIONS" in json.loads(body)["error"]["message"]
    assert took < READ_TIMEOUT_S / 2
    time.sleep(READ_TIMEOUT_S + 0.5)  # the stalled bodies time out; capacity is back
    assert httpx.get(f"{guarded.url}/health").status_code == 200
    assert _closed_counts(guarded)["refused"] >= 1


def test_cut_off_clients_leave_no_error_in_the_log_or_5xx_in_metrics(guarded: Server) -> None:
    log = guarded.log.read_text()
    assert "ERROR" not in log
    assert "Traceback" not in log
    answered = [
        line
        for line in httpx.get(f"{guarded.url}/metrics").text.splitlines()
        if line.startswith("bge_http_requests_total{")
    ]
    # A body cut off by the deadline is the client's failure (499), not the server's.
    assert any('status="499"' in line for line in answered)
    # (/health answered 503 while the models loaded; that is all the 5xx there is.)
    assert not any('status="5' in line and "/health" not in line for line in answered), answered


def _closed_counts(server: Server) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("bge_http_connections_closed_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    assert set(counts) == {"read_timeout", "write_timeout", "evicted", "refused", "bad_head"}
    return counts
