"""Stop work for clients that have gone: their queued texts never reach a forward pass."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from litestar import Request

__all__ = ["ClientDisconnected", "unless_disconnected"]

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def unless_disconnected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """``work``'s result, or ClientDisconnected once the client hangs up (``work`` is cancelled).

    The body has been read by the time a handler runs, so the next ASGI message
    can only be ``http.disconnect``; cancelling ``work`` cancels the engine call,
    and the micro-batcher skips its units.
    """
    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not job.done():
            job.cancel()
            # cancel() only asks: the job is done once its engine call has unwound.
            await asyncio.wait({job})
        watcher.cancel()
    if job.cancelled():
        raise ClientDisconnected
    return job.result()


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
