"""The remote backend's pooled HTTP/1.1 transport, against real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from backends.remote.http11 import PooledTransport
from tests.conftest import free_port
from tests.fake_tei import FakeTEI, serve

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw HTTP/1.1 server: ``handler`` answers request n on a connection; False closes it.
    Yields the base URL and the number of requests seen on each connection."""
    connections: list[int] = []

    async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        slot = len(connections) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                connections[slot] += 1
                if not await handler(reader, writer, connections[slot]):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listening = await asyncio.start_server(serve_connection, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        listening.close()


def answer(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "content-type: application/json", f"content-length: {len(body)}"]
    return ("\r\n".join([*head, *extra]) + "\r\n\r\n").encode() + body


async def keep_alive(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
    writer.write(answer(b'{"n": %d}' % n))
    await writer.drain()
    return True


def client(url: str, **timeouts: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        transport=PooledTransport(max_idle=4),
        timeout=httpx.Timeout(timeouts.get("read", 5.0), connect=timeouts.get("connect", 5.0)),
    )


def test_requests_reuse_one_keep_alive_connection() -> None:
    async def work() -> list[int]:
        async with server(keep_alive) as (url, connections), client(url) as http:
            for n in range(1, 21):
                response = await http.post("/x", json={"n": n})
                assert response.json() == {"n": n}
            return connections

    assert asyncio.run(work()) == [20]


def test_concurrent_requests_open_connections_and_keep_at_most_max_idle() -> None:
    async def work() -> list[int]:
        async with server(keep_alive) as (url, connections), client(url) as http:
            for _ in range(3):
                answers = await asyncio.gather(*(http.post("/x", json={}) for _ in range(8)))
                assert all(a.status_code == 200 for a in answers)
            return connections

    connections = asyncio.run(work())
    assert sum(connections) == 24
    assert 8 <= len(connections) <= 8 + 2 * (8 - 4)  # 4 idle kept; the rest reopened


def test_a_connection_the_remote_closed_while_idle_is_replaced_transparently() -> None:
    async def one_per_connection(
        _: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(answer(b"{}"))  # no `Connection: close`: the client cannot know
        await writer.drain()
        return False

    async def work() -> list[int]:
        async with server(one_per_connection) as (url, connections), client(url) as http:
            for _ in range(5):
                assert (await http.post("/x", json={})).status_code == 200
                await asyncio.sleep(0.01)
            return connections

    assert asyncio.run(work()) == [1] * 5


def test_connection_close_is_honoured_and_chunked_bodies_are_decoded() -> None:
    async def chunked(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            b"5\r\n[1, 2\r\n4\r\n, 3]\r\n0\r\n\r\n"
        )
        await writer.drain()
        return True  # the client must not reuse it anyway

    async def work() -> list[int]:
        async with server(chunked) as (url, connections), client(url) as http:
            for _ in range(2):
                assert (await http.post("/x", json={})).json() == [1, 2, 3]
            return connections

    assert asyncio.run(work()) == [1, 1]


def test_silence_is_a_read_timeout_and_no_listener_a_connect_error() -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter, n: int) -> bool:
        await reader.read()  # never answers
        return False

    async def work() -> None:
        async with server(silent) as (url, _), client(url, read=0.3) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post("/x", json={})
        async with client(f"http://127.0.0.1:{free_port()}") as http:
            with pytest.raises(httpx.ConnectError):
                await http.post("/x", json={})

    asyncio.run(work())


def test_an_answer_cut_short_is_a_protocol_error() -> None:
    async def cut(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(b'{"long": "body"}')[:-5])
        await writer.drain()
        return False

    async def work() -> None:
        async with server(cut) as (url, _), client(url) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post("/x", json={})

    asyncio.run(work())


def test_answers_equal_httpx_default_transport_on_tei() -> None:
    fake = FakeTEI(kind="embedding", max_client_batch_size=2)

    async def both(url: str, body: dict[str, Any]) -> tuple[httpx.Response, httpx.Response]:
        async with client(url) as lean, httpx.AsyncClient(base_url=url) as default:
            return await lean.post("/embed", json=body), await default.post("/embed", json=body)

    with serve(fake) as url:
        for body in ({"inputs": ["a b", "c"]}, {"inputs": ["a", "b", "c"]}):  # 200, then 413
            ours, reference = asyncio.run(both(url, body))
            assert ours.status_code == reference.status_code
            assert ours.content == reference.content
            assert without_date(ours.headers) == without_date(reference.headers)
    assert fake.contract_violations == []


def without_date(headers: httpx.Headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name != "date"}
