"""Every error the client raises, one tree::

    BgeError
    ├── ApiError                  the server answered an error: .status, .message (the server's)
    │   ├── InvalidRequestError       400, 422: the request itself is wrong; not retried
    │   ├── AuthenticationError       401: no API key, or not one the server knows
    │   ├── NotFoundError             404: a model (or route) the server does not serve
    │   ├── PayloadTooLargeError      413: over a request budget (MAX_BATCH_SIZE, tokens, bytes)
    │   ├── OverloadedError           429: still refused when the deadline came
    │   ├── UnavailableError          503: still loading / not served when the deadline came
    │   └── ServerError               any other 5xx (a backend failed, a remote timed out)
    ├── ConnectionFailedError     the server could not be reached until the deadline: .route
    ├── DeadlineExceededError     no answer within the deadline (also a TimeoutError): .route
    ├── ProtocolError             a 2xx body that no bge-serve sends: is the URL a bge-serve?
    └── SparseSpaceMismatch       sparse vectors in another index space than the client's
                                  (also a ValueError)

429 and 503 are retried after the ``Retry-After`` they carry and a dropped connection
after a short backoff, each until the client's deadline; what is raised then is the last
refusal (an ``OverloadedError`` carries the server's own message).
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BgeError",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "InvalidRequestError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProtocolError",
    "ServerError",
    "SparseSpaceMismatch",
    "UnavailableError",
    "api_error",
]


class BgeError(Exception):
    """Base of every error this client raises."""


class ApiError(BgeError):
    """The server answered ``status`` with an error; ``message`` is the server's own."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        route: str,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{route} answered {status}: {message}")
        self.status = status
        self.message = message
        self.route = route
        # The server's error code (OpenAI's envelope) or error_type (TEI's routes).
        self.code = code
        # The request field at fault, where the server names one (``input[1]``).
        self.param = param
        self.retry_after = retry_after


class InvalidRequestError(ApiError):
    """400 or 422: the request is wrong as sent; sending it again changes nothing."""


class AuthenticationError(ApiError):
    """401: the server wants an API key (``Client(api_key=...)``) or does not know this one."""


class NotFoundError(ApiError):
    """404: the server serves no such model or route."""


class PayloadTooLargeError(ApiError):
    """413: over one of the server's request budgets (texts, tokens, bytes)."""


class OverloadedError(ApiError):
    """429: the server refused the work until the client's deadline passed."""


class UnavailableError(ApiError):
    """503: the models were loading, or the operation is not served, until the deadline."""


class ServerError(ApiError):
    """Another 5xx: a backend failed (502, TEI's routes 424) or a remote timed out (504)."""


class ConnectionFailedError(BgeError):
    """The server could not be reached (refused, dropped, DNS) until the deadline, or at
    once by ``health(retry=False)``; ``route`` is the one tried, ``__cause__`` httpx's
    error of the last try."""

    def __init__(self, message: str, *, route: str) -> None:
        super().__init__(message)
        self.route = route


class DeadlineExceededError(BgeError, TimeoutError):
    """No answer came on ``route`` within the client's deadline."""

    def __init__(self, message: str, *, route: str) -> None:
        super().__init__(message)
        self.route = route


class ProtocolError(BgeError):
    """A success whose body does not decode as what bge-serve answers on that route."""


class SparseSpaceMismatch(BgeError, ValueError):
    """Sparse vectors in another index space than the one this client holds to.

    Stored vectors and query vectors in different spaces share no index: a sparse search
    would find nothing and say nothing, so the client refuses instead.
    """

    def __init__(self, message: str, *, expected: object, got: object) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: OverloadedError,
    503: UnavailableError,
}


def api_error(
    status: int,
    message: str,
    *,
    route: str,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
) -> ApiError:
    """The error class for ``status``: the table above, ServerError for other 5xx."""
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return kind(status, message, route=route, code=code, param=param, retry_after=retry_after)
