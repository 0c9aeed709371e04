"""What a request body must be before any handler sees it: JSON (UTF-8), plain or gzip,
of exactly the schema's types.

Litestar decodes a body whatever its Content-Type says, so ``text/plain`` (or a
gzipped body read as JSON) used to succeed or fail by accident; here the headers
are checked first and answered 415 naming what is accepted, and gzip is inflated
as it streams, in pieces, so ``MAX_REQUEST_BYTES`` bounds the inflated size (a
small bomb cannot expand in memory). Litestar also converts a body's values
leniently (``"top_n": "2"`` became 2); the OpenAI and Cohere APIs refuse that, so
:func:`strict_body` decodes the body strictly once more, before the handler, and
answers a mistyped field 422.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec
from litestar import Request
from litestar.enums import ScopeType
from litestar.exceptions import ValidationException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
from litestar.types.asgi_types import HTTPRequestEvent

from api.disconnect import ClientDisconnected
from api.errors import BodyRejected

__all__ = ["BodyGuard", "strict_body"]

_JSON = "application/json"
_ENCODINGS = "gzip, identity"
_PIECE = 64 * 1024  # inflated bytes handed on at a time


class BodyGuard(ASGIMiddleware):
    """Refuses what is not JSON, inflates gzip, and turns a client that leaves mid-body
    into :class:`ClientDisconnected` (Litestar would call it a 500)."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope.get("method") != "POST":
            await next_app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        _check_media_type(headers.get(b"content-type", b"").decode("latin-1"))
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            scope = {  # type: ignore[assignment]
                **scope,
                "headers": [(k, v) for k, v in scope["headers"] if k != b"content-encoding"],
            }
            receive = _Gunzip(receive)
        elif encoding not in ("identity", ""):
            raise BodyRejected(
                415,
                f"Content-Encoding `{encoding[:40]}` is not supported; send {_ENCODINGS}",
                (("Accept-Encoding", _ENCODINGS),),
            )
        await next_app(scope, _whole_or_disconnected(receive), send)


def _check_media_type(content_type: str) -> None:
    media_type, *params = (part.strip() for part in content_type.split(";"))
    media_type = media_type.lower()
    json_suffix = media_type.startswith("application/") and media_type.endswith("+json")
    if media_type != _JSON and not json_suffix:
        shown = f"`{media_type[:60]}`" if media_type else "none"
        raise BodyRejected(415, f"Content-Type must be {_JSON}; got {shown}")
    for param in params:
        name, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise BodyRejected(
                415, f"charset `{charset[:40]}` is not supported; JSON is UTF-8 ({_JSON})"
            )


def _whole_or_disconnected(receive: Receive) -> Receive:
    reading = True

    async def receiving() -> ReceiveMessage:
        nonlocal reading
        message = await receive()
        if not reading:
            return message  # after the body, a disconnect is news for the handler's watcher
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        reading = bool(message.get("more_body", False))
        return message

    return receiving


class _Gunzip:
    """A ``receive`` that inflates a gzip body, at most ``_PIECE`` bytes per message."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._inflate = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        self._more = True  # the client has more to send
        self._done = False  # the whole body was handed on

    async def __call__(self) -> ReceiveMessage:
        if self._done:
            return await self._receive()
        while True:
            data = self._inflate.unconsumed_tail
            if not data and self._more:
                message = await self._receive()
                if message["type"] != "http.request":
                    return message
                data = message.get("body", b"")
                self._more = message.get("more_body", False)
            try:
                piece = self._inflate.decompress(data, _PIECE)
            except zlib.error as exc:
                raise BodyRejected(400, f"the request body is not valid gzip: {exc}") from exc
            more = self._more or bool(self._inflate.unconsumed_tail)
            if not more and not self._inflate.eof:
                raise BodyRejected(400, "the request body is not valid gzip: it ends early")
            if piece or not more:
                self._done = not more
                inflated: HTTPRequestEvent = {
                    "type": "http.request",
                    "body": piece,
                    "more_body": more,
                }
                return inflated


async def strict_body(request: Request[Any, Any, Any]) -> None:
    """Decode the body as the handler's ``data`` type, strictly: a string where the
    schema says integer or boolean is a 422, as it is in the APIs clients expect."""
    field = request.route_handler.parsed_fn_signature.parameters.get("data")
    if field is None:
        return
    try:
        # Untyped first: a body that is not JSON is Litestar's to answer (400), even
        # where its first values already break the schema.
        value = msgspec.json.decode(await request.body())
    except (msgspec.DecodeError, RecursionError):
        return
    try:
        msgspec.convert(value, field.annotation, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationException(str(exc)) from exc
