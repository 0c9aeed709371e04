"""A lean HTTP/1.1 keep-alive transport for ``httpx.AsyncClient``, on asyncio streams and h11.

Ours to keep: it stands in for httpcore's connection pool, so no upstream release
fixes or changes it for us (its tests: tests/unit/test_http11.py). Retire it once
the gap below is gone: run ``python -m bench.proxy`` as the code stands and again
with ``RemoteClient`` (transport.py) given ``httpx.AsyncHTTPTransport()`` in
place of ``PooledTransport``, on httpx/httpcore's current release; if the proxy's
ratio to the remote is as good (encode/httpcore#1035 fixed), delete this module.

Measured on the 2-core CI machine, httpx's default transport (httpcore over
anyio) spends about 2 ms of CPU per small request one at a time and about 5 ms
with 16 in flight (its pool re-examines every connection for every request,
encode/httpcore#1035); on the cores the model needs, that cost the proxy a
quarter of the remote's throughput. This transport keeps what the proxy needs:
one origin, keep-alive connections reused last-in first-out, h11 for framing
(content-length and chunked), connect and read timeouts, TLS for https, and
httpx's own exceptions. What it leaves out: HTTP/2, proxies from the
environment, connection limits (the client above bounds requests in flight).

A request that finds its reused connection closed by the remote (an idle
keep-alive timeout) before any byte of an answer is sent again, once, on a new
connection; nothing else is retried here.
"""

from __future__ import annotations

import asyncio
import ssl
from contextlib import suppress

import certifi
import h11
import httpx

__all__ = ["PooledTransport"]

_READ_CHUNK = 64 * 1024


class _Stale(Exception):
    """A reused connection was found closed before the remote answered anything."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT)

    @property
    def reusable(self) -> bool:
        return (
            self._h11.our_state is h11.IDLE
            and self._h11.their_state is h11.IDLE
            and not self._reader.at_eof()
        )

    def close(self) -> None:
        self._writer.close()

    async def exchange(
        self, request: httpx.Request, body: bytes, read_timeout: float | None
    ) -> httpx.Response:
        connection = self._h11
        head = h11.Request(
            method=request.method,
            target=request.url.raw_path,
            headers=list(request.headers.raw),
        )
        data = connection.send(head) or b""
        if body:
            data += connection.send(h11.Data(data=body)) or b""
        data += connection.send(h11.EndOfMessage()) or b""
        answered = False
        try:
            self._writer.write(data)
            await self._writer.drain()
            async with asyncio.timeout(read_timeout):
                status, headers, parts = 0, list[tuple[bytes, bytes]](), list[bytes]()
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        chunk = await self._reader.read(_READ_CHUNK)
                        answered = answered or bool(chunk)
                        connection.receive_data(chunk)
                    elif isinstance(event, h11.Response):
                        status, headers = event.status_code, list(event.headers)
                    elif isinstance(event, h11.Data):
                        parts.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        raise h11.RemoteProtocolError("the remote closed the connection")
        except TimeoutError:
            raise httpx.ReadTimeout("no answer within the read timeout", request=request) from None
        except h11.RemoteProtocolError as exc:
            if not answered:
                raise _Stale from exc
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except (ConnectionError, OSError) as exc:
            if not answered:
                raise _Stale from exc
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
            connection.start_next_cycle()
        return httpx.Response(
            status,
            headers=[(bytes(name), bytes(value)) for name, value in headers],
            content=b"".join(parts),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )


class PooledTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_idle: int) -> None:
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._ssl: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        while self._idle:
            connection = self._idle.pop()
            if not connection.reusable:
                connection.close()
                continue
            try:
                response = await connection.exchange(request, body, timeouts.get("read"))
                return self._keep(connection, response)
            except _Stale:
                connection.close()
                break  # the others idled as long: start afresh
            except BaseException:
                connection.close()
                raise
        connection = await self._connect(request, timeouts.get("connect"))
        try:
            response = await connection.exchange(request, body, timeouts.get("read"))
        except _Stale as exc:
            connection.close()
            raise httpx.RemoteProtocolError(
                "the remote closed the connection without answering", request=request
            ) from exc
        except BaseException:
            connection.close()
            raise
        return self._keep(connection, response)

    def _keep(self, connection: _Connection, response: httpx.Response) -> httpx.Response:
        if connection.reusable and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def _connect(self, request: httpx.Request, timeout: float | None) -> _Connection:
        url = request.url
        secure = url.scheme == "https"
        port = url.port or (443 if secure else 80)
        if secure and self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=certifi.where())
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    url.host,
                    port,
                    ssl=self._ssl if secure else None,
                    server_hostname=url.host if secure else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {url.host}:{port} within {timeout} s", request=request
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with suppress(OSError):
                connection.close()
