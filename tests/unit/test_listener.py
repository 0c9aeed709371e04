"""bge-serve's listening socket gives asyncio connections with TCP_NODELAY.

asyncio sets TCP_NODELAY only on accepted sockets whose proto is IPPROTO_TCP; a listener
made with proto 0 gave connections without it, and every keep-alive answer (head and body
written apart) waited out the client's delayed ACK: 44 ms for GET /health on loopback.
"""

from __future__ import annotations

import asyncio
import socket

from api.cli import _listen


class _Recorder(asyncio.Protocol):
    def __init__(self, seen: asyncio.Future[int]) -> None:
        self._seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        self._seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        transport.close()


def test_accepted_connections_have_nodelay() -> None:
    async def accept_one() -> int:
        listener = _listen("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server = await asyncio.get_running_loop().create_server(
            lambda: _Recorder(seen), sock=listener
        )
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 5)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(accept_one()) != 0
