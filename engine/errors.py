"""Errors the engine raises. The API maps each kind to one HTTP status.

EngineError                 any failure the service reports to a client
├── InvalidInput            a request value is wrong: empty text, bad dimensions
├── InputTooLarge           more items, characters or tokens than allowed
├── ModelNotFound           the request names a model this service does not serve
├── Overloaded              no room for more work now; retry after ``retry_after`` s
├── Unavailable             the models are loading, or the operation is not served
└── BackendFailure          a backend failed on a valid request
    └── BackendTimeout      a backend did not answer within its deadline

StartupError                the service cannot start (bad settings, model not found);
                            /health shows it, without filesystem paths (``without_paths``)
"""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = [
    "BackendFailure",
    "BackendTimeout",
    "EngineError",
    "ErrorKind",
    "InputTooLarge",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "StartupError",
    "Unavailable",
    "without_paths",
]


class ErrorKind(StrEnum):
    INVALID_INPUT = "invalid_input"
    TOO_LARGE = "too_large"
    MODEL_NOT_FOUND = "model_not_found"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    BACKEND = "backend"
    TIMEOUT = "timeout"


class EngineError(Exception):
    kind: ErrorKind = ErrorKind.BACKEND

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInput(EngineError):
    kind = ErrorKind.INVALID_INPUT


class InputTooLarge(EngineError):
    kind = ErrorKind.TOO_LARGE


class ModelNotFound(EngineError):
    kind = ErrorKind.MODEL_NOT_FOUND


class Overloaded(EngineError):
    kind = ErrorKind.OVERLOADED

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(EngineError):
    kind = ErrorKind.UNAVAILABLE

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BackendFailure(EngineError):
    kind = ErrorKind.BACKEND


class StartupError(Exception):
    """The service cannot start; the message says what to change."""


class BackendTimeout(BackendFailure):
    kind = ErrorKind.TIMEOUT


# An absolute or home filesystem path: a "/" (or "~/") that starts no URL path (not
# after "host:port", a scheme's "//", or a word), then its segments.
_PATH = re.compile(r"(?<![\w:/.~-])~?/(?:[\w.@+~-]+/?)+")


def without_paths(message: str) -> str:
    """``message`` with filesystem paths replaced by ``<path>``: what a client may see of
    the server's layout (the log keeps the full message)."""
    return _PATH.sub("<path>", message)
