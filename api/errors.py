"""One table from error kind to HTTP status, and one error body for every failure.

Every error answers ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's
envelope, which the openai SDK reads): engine errors through :data:`STATUS`,
Litestar's own (malformed JSON, schema violations, unknown routes, oversized
bodies) through :func:`http_error`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_502_BAD_GATEWAY,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_504_GATEWAY_TIMEOUT,
)

from engine.errors import EngineError, ErrorKind, Overloaded, Unavailable

__all__ = [
    "ERROR_RESPONSES",
    "STATUS",
    "ErrorBody",
    "ErrorEnvelope",
    "client_disconnected",
    "engine_error",
    "http_error",
    "unexpected_error",
]

log = logging.getLogger(__name__)

STATUS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_INPUT: (HTTP_422_UNPROCESSABLE_ENTITY, "invalid_request_error"),
    ErrorKind.TOO_LARGE: (HTTP_413_REQUEST_ENTITY_TOO_LARGE, "invalid_request_error"),
    ErrorKind.MODEL_NOT_FOUND: (HTTP_404_NOT_FOUND, "invalid_request_error"),
    ErrorKind.OVERLOADED: (HTTP_429_TOO_MANY_REQUESTS, "overloaded_error"),
    ErrorKind.UNAVAILABLE: (HTTP_503_SERVICE_UNAVAILABLE, "unavailable_error"),
    ErrorKind.BACKEND: (HTTP_502_BAD_GATEWAY, "backend_error"),
    ErrorKind.TIMEOUT: (HTTP_504_GATEWAY_TIMEOUT, "timeout_error"),
}


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


ERROR_RESPONSES: dict[int, ResponseSpec] = {
    status: ResponseSpec(data_container=ErrorEnvelope, description=description)
    for status, description in (
        (HTTP_400_BAD_REQUEST, "The body is not JSON"),
        (HTTP_404_NOT_FOUND, "The request names a model this service does not serve"),
        (HTTP_413_REQUEST_ENTITY_TOO_LARGE, "Too many items, characters or bytes"),
        (HTTP_422_UNPROCESSABLE_ENTITY, "A field is missing, of the wrong type, or empty"),
        (HTTP_429_TOO_MANY_REQUESTS, "Overloaded; retry after Retry-After seconds"),
        (HTTP_502_BAD_GATEWAY, "A backend failed, e.g. a remote engine answered nonsense"),
        (HTTP_503_SERVICE_UNAVAILABLE, "Models are loading, or the operation is not served"),
        (HTTP_504_GATEWAY_TIMEOUT, "A remote engine did not answer within REMOTE_TIMEOUT_S"),
    )
}
"""Documents the error envelope in the OpenAPI schema of every model route."""


def _respond(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None,
    param: str | None = None,
    retry_after: int | None = None,
) -> Response[ErrorEnvelope]:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return Response(
        ErrorEnvelope(ErrorBody(message=message, type=type_, param=param, code=code)),
        status_code=status,
        headers=headers,
    )


def engine_error(_: Request[Any, Any, Any], exc: EngineError) -> Response[ErrorEnvelope]:
    status, type_ = STATUS[exc.kind]
    retry_after = exc.retry_after if isinstance(exc, Overloaded | Unavailable) else None
    return _respond(
        status,
        exc.message,
        type_=type_,
        code=str(exc.kind),
        param=exc.param,
        retry_after=retry_after,
    )


# msgspec paths look like "$.data.input[3]"; the client knows the field as "input[3]".
_PATH = re.compile(r" - at `\$\.data\.?(?P<path>[^`]*)`$")


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorEnvelope]:
    if isinstance(exc, ValidationException):
        return _validation_error(exc)
    status = exc.status_code
    if status == HTTP_400_BAD_REQUEST:
        # Litestar raises a plain 400 when the body is not JSON at all.
        return _respond(
            status,
            f"the request body is not valid JSON: {exc.detail}",
            type_="invalid_request_error",
            code="malformed_json",
        )
    if status == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return _respond(
            status,
            "the request body is larger than MAX_REQUEST_BYTES",
            type_="invalid_request_error",
            code=str(ErrorKind.TOO_LARGE),
        )
    return _respond(status, str(exc.detail), type_="invalid_request_error", code=None)


def _validation_error(exc: ValidationException) -> Response[ErrorEnvelope]:
    cause = exc.__cause__
    text = str(cause) if isinstance(cause, msgspec.ValidationError) else str(exc.detail)
    if text == "Object missing required field `data`":
        return _respond(
            HTTP_400_BAD_REQUEST,
            "the request body is empty; send a JSON object",
            type_="invalid_request_error",
            code="malformed_json",
        )
    match = _PATH.search(text)
    param = match.group("path") or None if match else None
    message = _PATH.sub("", text)
    if param is not None:
        message = f"`{param}`: {message}"
    return _respond(
        HTTP_422_UNPROCESSABLE_ENTITY,
        message,
        type_="invalid_request_error",
        code=str(ErrorKind.INVALID_INPUT),
        param=param,
    )


def client_disconnected(_: Request[Any, Any, Any], __: Exception) -> Response[None]:
    # Nobody reads this; 499 is what access logs conventionally record for it (nginx).
    return Response(None, status_code=499)


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorEnvelope]:
    # A bug, not a client error: keep the details in the log, off the wire.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "internal error; see the service log",
        type_="internal_error",
        code="internal_error",
    )
