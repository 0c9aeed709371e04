"""One table from error kind to HTTP status, and the error bodies of every dialect.

Every failure becomes a :class:`Problem` (engine errors through :data:`STATUS`,
Litestar's own — malformed JSON, schema violations, unknown routes, oversized
bodies — through :func:`problem_of`), then a body in the caller's dialect:
OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` (which the
openai, cohere and Infinity clients read) everywhere, except TEI's routes, which
answer TEI's ``{"error", "error_type"}`` with TEI's statuses.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_408_REQUEST_TIMEOUT,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_424_FAILED_DEPENDENCY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_502_BAD_GATEWAY,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_504_GATEWAY_TIMEOUT,
)

from engine.errors import EngineError, ErrorKind, Overloaded, Unavailable

__all__ = [
    "EITHER_ERROR_RESPONSES",
    "ERROR_RESPONSES",
    "STATUS",
    "TEI_ERROR_RESPONSES",
    "BodyRejected",
    "ErrorBody",
    "ErrorEnvelope",
    "Problem",
    "TeiError",
    "client_disconnected",
    "engine_error",
    "head_problem",
    "http_error",
    "malformed_body",
    "problem_of",
    "request_timeout_problem",
    "tei_error",
    "unexpected_error",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Status:
    http: int
    type: str  # the OpenAI envelope's "type"
    tei_http: int  # TEI answers a failed backend 424, and has no 502/504
    tei_type: str  # TEI's "error_type"


STATUS: dict[ErrorKind, Status] = {
    ErrorKind.INVALID_INPUT: Status(
        HTTP_422_UNPROCESSABLE_ENTITY,
        "invalid_request_error",
        HTTP_422_UNPROCESSABLE_ENTITY,
        "Validation",
    ),
    ErrorKind.TOO_LARGE: Status(
        HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        "invalid_request_error",
        HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        "Validation",
    ),
    ErrorKind.MODEL_NOT_FOUND: Status(
        HTTP_404_NOT_FOUND, "invalid_request_error", HTTP_404_NOT_FOUND, "Validation"
    ),
    ErrorKind.OVERLOADED: Status(
        HTTP_429_TOO_MANY_REQUESTS, "overloaded_error", HTTP_429_TOO_MANY_REQUESTS, "Overloaded"
    ),
    ErrorKind.UNAVAILABLE: Status(
        HTTP_503_SERVICE_UNAVAILABLE,
        "unavailable_error",
        HTTP_503_SERVICE_UNAVAILABLE,
        "Unhealthy",
    ),
    ErrorKind.BACKEND: Status(
        HTTP_502_BAD_GATEWAY, "backend_error", HTTP_424_FAILED_DEPENDENCY, "Backend"
    ),
    ErrorKind.TIMEOUT: Status(
        HTTP_504_GATEWAY_TIMEOUT, "timeout_error", HTTP_424_FAILED_DEPENDENCY, "Backend"
    ),
}
_MALFORMED = Status(
    HTTP_400_BAD_REQUEST, "invalid_request_error", HTTP_400_BAD_REQUEST, "Validation"
)
_UNAUTHORIZED = Status(
    HTTP_401_UNAUTHORIZED, "authentication_error", HTTP_401_UNAUTHORIZED, "Validation"
)
_UNSUPPORTED = Status(
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    "invalid_request_error",
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    "Validation",
)
_TIMED_OUT = Status(
    HTTP_408_REQUEST_TIMEOUT, "invalid_request_error", HTTP_408_REQUEST_TIMEOUT, "Validation"
)
_INTERNAL = Status(
    HTTP_500_INTERNAL_SERVER_ERROR,
    "internal_error",
    HTTP_500_INTERNAL_SERVER_ERROR,
    "Backend",
)


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class TeiError(msgspec.Struct):
    error: str
    error_type: str


@dataclass(frozen=True, slots=True)
class _Documented:
    description: str
    kind: ErrorKind | None  # None: not an engine error (malformed JSON, no key)
    example: str
    param: str | None = None


_DOCUMENTED: dict[int, _Documented] = {
    HTTP_400_BAD_REQUEST: _Documented(
        "The body is not JSON", None, "the request body is not valid JSON: Expected `,`"
    ),
    HTTP_401_UNAUTHORIZED: _Documented(
        "API_KEY is set and the request has no valid key",
        None,
        "the API key is not valid",
    ),
    HTTP_404_NOT_FOUND: _Documented(
        "The request names a model this service does not serve",
        ErrorKind.MODEL_NOT_FOUND,
        "model `text-embedding-3-small` is not served here; embed answers to `BAAI/bge-m3`, "
        "`bge-m3`",
        "model",
    ),
    HTTP_413_REQUEST_ENTITY_TOO_LARGE: _Documented(
        "Too many items, characters, tokens or bytes",
        ErrorKind.TOO_LARGE,
        "`input` has 4096 items; the limit is 2048 (MAX_BATCH_SIZE)",
        "input",
    ),
    HTTP_415_UNSUPPORTED_MEDIA_TYPE: _Documented(
        "The body is not JSON in UTF-8, or is compressed other than with gzip",
        None,
        "Content-Type must be application/json; got `text/plain`",
    ),
    HTTP_422_UNPROCESSABLE_ENTITY: _Documented(
        "A field is missing, of the wrong type, or empty",
        ErrorKind.INVALID_INPUT,
        "`input[1]` is empty or whitespace",
        "input[1]",
    ),
    HTTP_429_TOO_MANY_REQUESTS: _Documented(
        "Overloaded; retry after Retry-After seconds",
        ErrorKind.OVERLOADED,
        "256 requests are queued for the embedding model (MAX_QUEUED_REQUESTS); retry shortly",
    ),
    HTTP_502_BAD_GATEWAY: _Documented(
        "A backend failed, e.g. a remote engine answered nonsense",
        ErrorKind.BACKEND,
        "the remote http://tei:80 answered /embed with 2 rows for 3 texts",
    ),
    HTTP_503_SERVICE_UNAVAILABLE: _Documented(
        "Models are loading, or the operation is not served",
        ErrorKind.UNAVAILABLE,
        "the models are still loading",
    ),
    HTTP_504_GATEWAY_TIMEOUT: _Documented(
        "A remote engine did not answer within REMOTE_TIMEOUT_S",
        ErrorKind.TIMEOUT,
        "the remote http://tei:80 did not answer within 30 s (REMOTE_TIMEOUT_S)",
    ),
}


def _documented_problem(status: int, documented: _Documented) -> Problem:
    if status == HTTP_401_UNAUTHORIZED:
        return Problem(_UNAUTHORIZED, documented.example, "invalid_api_key")
    if status == HTTP_415_UNSUPPORTED_MEDIA_TYPE:
        return Problem(_UNSUPPORTED, documented.example, "unsupported_media_type")
    if documented.kind is None:
        return Problem(_MALFORMED, documented.example, "malformed_json")
    return Problem(
        STATUS[documented.kind], documented.example, str(documented.kind), documented.param
    )


def _error_responses(dialect: Literal["openai", "tei"]) -> dict[int, ResponseSpec]:
    responses: dict[int, ResponseSpec] = {}
    for status, documented in _DOCUMENTED.items():
        problem = _documented_problem(status, documented)
        body: msgspec.Struct
        if dialect == "openai":
            body = problem.openai_body()
        elif status == HTTP_404_NOT_FOUND:
            continue  # TEI's routes take no model
        else:
            status, body = problem.status.tei_http, problem.tei_body()
        # TEI answers 502 and 504 both as 424: the first description stays.
        responses.setdefault(
            status,
            ResponseSpec(
                data_container=type(body),
                description=documented.description,
                generate_examples=False,
                examples=[Example(summary=documented.description, value=body)],
            ),
        )
    return responses


class BodyRejected(HTTPException):
    """A body refused before it is decoded: its media type, charset or compression."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(detail=message, status_code=status, headers=dict(headers) or None)


@dataclass(frozen=True, slots=True)
class Problem:
    """A failure, before it is written in a dialect."""

    status: Status
    message: str
    code: str | None
    param: str | None = None
    retry_after: int | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def openai_body(self) -> ErrorEnvelope:
        return ErrorEnvelope(
            ErrorBody(message=self.message, type=self.status.type, param=self.param, code=self.code)
        )

    def tei_body(self) -> TeiError:
        return TeiError(error=self.message, error_type=self.status.tei_type)

    def openai(self) -> Response[ErrorEnvelope]:
        return Response(self.openai_body(), status_code=self.status.http, headers=self._headers())

    def tei(self) -> Response[TeiError]:
        return Response(self.tei_body(), status_code=self.status.tei_http, headers=self._headers())

    def header_items(self) -> list[tuple[str, str]]:
        headers = list(self.headers)
        if self.retry_after is not None:
            headers.append(("Retry-After", str(self.retry_after)))
        return headers

    def _headers(self) -> dict[str, str] | None:
        return dict(self.header_items()) or None


ERROR_RESPONSES = _error_responses("openai")
"""Documents the error envelope in the OpenAPI schema of every model route."""
TEI_ERROR_RESPONSES = _error_responses("tei")
"""TEI's routes: TEI's error body and statuses."""


def _either(
    openai: dict[int, ResponseSpec], tei: dict[int, ResponseSpec]
) -> dict[int, ResponseSpec]:
    either: dict[int, ResponseSpec] = {}
    body: Any = ErrorEnvelope | TeiError  # Litestar documents a union as oneOf
    for status in sorted({*openai, *tei}):
        spec = openai.get(status) or tei[status]
        either[status] = ResponseSpec(
            data_container=body,
            description=spec.description,
            generate_examples=False,
            examples=spec.examples,
        )
    return either


EITHER_ERROR_RESPONSES = _either(ERROR_RESPONSES, TEI_ERROR_RESPONSES)
"""A route that answers in TEI's shape or OpenAI's, by the body (the bare /rerank)."""


def problem_of(exc: Exception) -> Problem:
    """The problem behind an engine error or one of Litestar's HTTP errors."""
    if isinstance(exc, EngineError):
        retry_after = exc.retry_after if isinstance(exc, Overloaded | Unavailable) else None
        return Problem(
            STATUS[exc.kind], exc.message, str(exc.kind), exc.param, retry_after=retry_after
        )
    if isinstance(exc, ValidationException | msgspec.ValidationError):
        return _validation_problem(exc)
    if isinstance(exc, UnicodeDecodeError):
        return Problem(
            _MALFORMED,
            f"the request body is not UTF-8: byte {exc.start} cannot start or continue a "
            "character (JSON is UTF-8)",
            "malformed_json",
        )
    if isinstance(exc, RecursionError):
        return Problem(_MALFORMED, "the request body is nested too deeply", "malformed_json")
    if isinstance(exc, BodyRejected):
        unsupported = exc.status_code == HTTP_415_UNSUPPORTED_MEDIA_TYPE
        return Problem(
            _UNSUPPORTED if unsupported else _MALFORMED,
            str(exc.detail),
            "unsupported_media_type" if unsupported else "malformed_body",
            headers=tuple((exc.headers or {}).items()),
        )
    if isinstance(exc, HTTPException):
        status = exc.status_code
        if status == HTTP_400_BAD_REQUEST:
            # Litestar raises a plain 400 when the body is not JSON at all.
            return Problem(
                _MALFORMED, f"the request body is not valid JSON: {exc.detail}", "malformed_json"
            )
        if status == HTTP_401_UNAUTHORIZED:
            return Problem(
                _UNAUTHORIZED,
                str(exc.detail),
                "invalid_api_key",
                headers=tuple((exc.headers or {}).items()),
            )
        if status == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
            return Problem(
                STATUS[ErrorKind.TOO_LARGE],
                "the request body is larger than MAX_REQUEST_BYTES",
                str(ErrorKind.TOO_LARGE),
            )
        # Litestar's own headers come along: Allow on a 405, for one.
        return Problem(
            Status(status, "invalid_request_error", status, "Validation"),
            str(exc.detail),
            None,
            headers=tuple((exc.headers or {}).items()),
        )
    return Problem(_INTERNAL, "internal error; see the service log", "internal_error")


def request_timeout_problem(timeout_s: float) -> Problem:
    return Problem(
        _TIMED_OUT,
        f"the request did not arrive whole within {timeout_s:g} s of its first byte "
        "(HTTP_READ_TIMEOUT_S)",
        "request_timeout",
    )


def head_problem(status: int, message: str, code: str) -> Problem:
    """A request head the HTTP layer refuses before routing (400, 414, 431)."""
    return Problem(Status(status, "invalid_request_error", status, "Validation"), message, code)


def engine_error(_: Request[Any, Any, Any], exc: EngineError) -> Response[ErrorEnvelope]:
    return problem_of(exc).openai()


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorEnvelope]:
    return problem_of(exc).openai()


def tei_error(request: Request[Any, Any, Any], exc: Exception) -> Response[TeiError]:
    if not isinstance(exc, EngineError | HTTPException | MalformedBody):
        _log_bug(request, exc)
    return problem_of(exc).tei()


MalformedBody = UnicodeDecodeError | RecursionError
"""What Litestar's JSON decoder raises, unwrapped, for invalid UTF-8 and deep nesting."""


def malformed_body(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorEnvelope]:
    return problem_of(exc).openai()


# msgspec paths look like "$.data.input[3]" (a handler's body) or "$.input[3]" (a body
# decoded by hand); the client knows the field as "input[3]".
_PATH = re.compile(r" - at `\$(?:\.data)?\.?(?P<path>[^`]*)`$")


def _validation_problem(exc: ValidationException | msgspec.ValidationError) -> Problem:
    if isinstance(exc, msgspec.ValidationError):
        text = str(exc)
    else:
        cause = exc.__cause__
        text = str(cause) if isinstance(cause, msgspec.ValidationError) else str(exc.detail)
    if text == "Object missing required field `data`":
        return Problem(
            _MALFORMED, "the request body is empty; send a JSON object", "malformed_json"
        )
    match = _PATH.search(text)
    param = match.group("path") or None if match else None
    message = _PATH.sub("", text)
    if param is not None:
        message = f"`{param}`: {message}"
    return Problem(
        STATUS[ErrorKind.INVALID_INPUT], message, str(ErrorKind.INVALID_INPUT), param=param
    )


def client_disconnected(_: Request[Any, Any, Any], __: Exception) -> Response[None]:
    # Nobody reads this; 499 is what access logs conventionally record for it (nginx).
    return Response(None, status_code=499)


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorEnvelope]:
    _log_bug(request, exc)
    return problem_of(exc).openai()


def _log_bug(request: Request[Any, Any, Any], exc: Exception) -> None:
    # A bug, not a client error: keep the details in the log, off the wire.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
