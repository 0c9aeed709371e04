"""One request's tries until its deadline, with no I/O, so the sync and async clients
run the same rules (and tests can drive them with a fake clock).

A 429 or 503 is retried after the ``Retry-After`` it carries (a busy or loading server
asks for patience, not failure), a dropped or refused connection after a backoff with
jitter; any other answer is final. Every try and every wait counts against one
deadline: a wait that would end past it is not waited for in vain, and what is raised
then is the last refusal, with the server's own message. A request sent with
``retry=False`` (a probe: ``health(retry=False)``) is tried once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NoReturn

import httpx
import msgspec

from bge_client._errors import (
    ApiError,
    BgeError,
    ConnectionFailedError,
    DeadlineExceededError,
    api_error,
)

__all__ = ["RETRIED_STATUSES", "Attempts", "error_of"]

RETRIED_STATUSES = frozenset({429, 503})
# No Retry-After asks for more; one asking for longer is cut to this.
_MAX_WAIT_S = 30.0
# The floor of every wait, so a `Retry-After: 0` cannot make a tight loop.
_MIN_WAIT_S = 0.05
# What a last connection attempt before the deadline is left: a refused connection is
# answered at once, a dropped one within a round trip.
_LAST_TRY_S = 0.1


class _ErrorBody(msgspec.Struct):
    message: str
    type: str | None = None
    param: str | None = None
    code: str | None = None


class _Envelope(msgspec.Struct):
    """OpenAI's error envelope (every route but TEI's) or TEI's body (TEI's routes)."""

    error: _ErrorBody | str
    error_type: str | None = None


def error_of(response: httpx.Response, route: str) -> ApiError:
    """The typed error for a non-2xx answer, with the server's message."""
    retry_after = _retry_after(response)
    try:
        envelope = msgspec.json.decode(response.content, type=_Envelope)
    except msgspec.DecodeError:
        # Not the service's body (a proxy's page, Litestar's plain 405): its text is all
        # there is to say.
        text = response.text.strip()[:300] or response.reason_phrase
        return api_error(response.status_code, text, route=route, retry_after=retry_after)
    body = envelope.error
    if isinstance(body, str):
        return api_error(
            response.status_code,
            body,
            route=route,
            code=envelope.error_type,
            retry_after=retry_after,
        )
    return api_error(
        response.status_code,
        body.message,
        route=route,
        code=body.code or body.type,
        param=body.param,
        retry_after=retry_after,
    )


def _retry_after(response: httpx.Response) -> float | None:
    # Seconds only: bge-serve never sends the HTTP-date form.
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _backoff(attempt: int) -> float:
    # Jitter (not a secret): clients that failed together retry apart.
    return min(_MAX_WAIT_S, 0.25 * 2.0**attempt) * random.uniform(1, 1.5)  # noqa: S311


class Attempts:
    """The tries of one request to ``route``, given up on ``timeout_s`` after it began
    (or after its first try, where ``retry`` is False)."""

    def __init__(
        self, route: str, timeout_s: float, clock: Callable[[], float], *, retry: bool = True
    ) -> None:
        self.route = route
        self._timeout_s = timeout_s
        self._clock = clock
        self._retry = retry
        self._deadline = clock() + timeout_s
        self._attempt = 0
        # Why the last try failed: what is raised if the deadline then cuts the next.
        self._failure: BgeError | None = None

    @property
    def deadline(self) -> float:
        return self._deadline

    def remaining(self) -> float:
        """Seconds the next try may take; raises once none are left."""
        left = self._deadline - self._clock()
        if left <= 0:
            self.timed_out()
        return left

    def timed_out(self) -> NoReturn:
        """The deadline came during a try (or before it)."""
        raise self._failure or DeadlineExceededError(
            f"{self.route} was not answered within the client's {self._timeout_s:g} s deadline",
            route=self.route,
        )

    def unreachable(self, error: httpx.TransportError, base_url: str) -> float:
        """Seconds to wait after a refused or dropped connection; raises past the deadline."""
        given_up = (
            f"gave up after the client's {self._timeout_s:g} s deadline"
            if self._retry
            else "not retried"
        )
        self._failure = ConnectionFailedError(
            f"{base_url} could not be reached on {self.route}; {given_up}: {error!r}",
            route=self.route,
        )
        self._failure.__cause__ = error
        # The server may be restarting: tries go on until the deadline, the last one
        # just before it.
        left = self._deadline - self._clock() - _LAST_TRY_S
        return self._wait(min(_backoff(self._attempt), left))

    def refused(self, response: httpx.Response) -> float:
        """Seconds to wait before sending again after ``response``, an error; raises the
        typed error where it is final or the wait would pass the deadline."""
        error = error_of(response, self.route)
        if response.status_code not in RETRIED_STATUSES:
            raise error
        self._failure = error
        if error.retry_after is None:
            wait = _backoff(self._attempt)
        else:
            asked = min(_MAX_WAIT_S, max(error.retry_after, _MIN_WAIT_S))
            wait = asked * random.uniform(1, 1.2)  # noqa: S311 - jitter, as above
        return self._wait(wait)

    def _wait(self, wait: float) -> float:
        assert self._failure is not None
        if not self._retry or wait <= 0 or self._clock() + wait >= self._deadline:
            raise self._failure
        self._attempt += 1
        return wait
