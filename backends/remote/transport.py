"""One pooled HTTP client per remote URL: bounded concurrency, deadlines, retries.

What a remote answers is turned into the engine's errors here, once, for every
remote kind:

- 2xx: the body, for the dialect to decode;
- 400, 413, 422: the request's own fault, with the remote's message
  (InvalidInput / InputTooLarge; the router does not fall through);
- connection errors, timeouts, 429, 503: retried with jittered exponential
  backoff, honouring Retry-After, never past the call's deadline; then
  Overloaded (429), Unavailable (503), BackendTimeout or BackendFailure;
- anything else (401, 404, 424, 500, ...): BackendFailure naming the remote.

Every answer says where it came from (the remote's public URL and the route
asked), so the checks of answers.py name both without being told. URLs in
messages and logs never carry credentials.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx
import msgspec

from backends.remote.http11 import PooledTransport
from engine.errors import (
    BackendFailure,
    BackendTimeout,
    InputTooLarge,
    InvalidInput,
    Overloaded,
    Unavailable,
)

__all__ = [
    "Answer",
    "Deadline",
    "RemoteClient",
    "RemoteUnreachable",
    "TransportFactory",
    "describe_transport_error",
    "public_url",
    "remote_message",
    "together",
]

log = logging.getLogger(__name__)

# First backoff step; each retry doubles it (with jitter), up to _BACKOFF_CAP_S.
_BACKOFF_BASE_S = 0.1
_BACKOFF_CAP_S = 5.0
# A dead host should be noticed long before REMOTE_TIMEOUT_S.
_CONNECT_TIMEOUT_S = 5.0
_RETRIED_STATUS = frozenset({429, 503})
_CLIENT_FAULT = {400: InvalidInput, 413: InputTooLarge, 422: InvalidInput}

T = TypeVar("T")


# Tests plug in respx's or httpx's mock transports; each client gets its own.
TransportFactory = Callable[[], httpx.AsyncBaseTransport]


class RemoteUnreachable(BackendFailure):
    """The remote could not be reached at all (refused, reset, DNS): it is down."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"the remote {url} could not be reached ({reason})")
        self.reason = reason


def public_url(url: str | httpx.URL) -> str:
    """``url`` fit for messages, logs and ``/health``: without user name and password, and
    without its query and fragment (a gateway's ``?token=...`` is a credential too)."""
    parsed = httpx.URL(url)
    shown = parsed.copy_with(username=None, password=None, query=None, fragment=None)
    return str(shown).rstrip("/")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: httpx.Headers
    content: bytes
    url: str  # the remote's public URL
    path: str  # the route asked, as messages name it


class Deadline:
    """The end of one call to the remote; every attempt and wait fits before it."""

    def __init__(self, seconds: float, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or asyncio.get_running_loop().time
        self._end = self._clock() + seconds
        self.seconds = seconds

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())


class RemoteClient:
    # Probes are small requests; a remote that needs longer than this is not up.
    probe_timeout_s: ClassVar[float] = 10.0

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        max_concurrency: int,
        retries: int,
        transport: TransportFactory | None = None,
    ) -> None:
        self.url = public_url(url)
        parsed = httpx.URL(url)
        # httpx would append the paths called after the base URL's query (`/?token=x/info`):
        # the query goes on every request as parameters instead.
        base = parsed.copy_with(query=None, fragment=None)
        # Content-Type on GETs too: per-request headers would cost a merge on every call.
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": "bge-inference-service",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
            # httpx would turn credentials in the URL into Basic auth over the Bearer key.
            base = base.copy_with(username=None, password=None)
        self._http = httpx.AsyncClient(
            base_url=base,
            params=parsed.params,
            headers=headers,
            transport=transport() if transport else PooledTransport(max_idle=max_concurrency),
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        # Absolute URLs per path, built once: httpx parses a str URL twice per request.
        self._urls: dict[str, httpx.URL] = {}
        self._retries = retries
        self.in_flight = 0
        self.requests = 0
        self.retried = 0

    async def close(self) -> None:
        await self._http.aclose()

    async def get(self, path: str, deadline: Deadline) -> Answer:
        """One attempt, no retry: used to probe what the remote is."""
        return await self._send("GET", path, None, deadline)

    async def post(self, path: str, body: object, deadline: Deadline) -> Answer:
        """``body`` as JSON; retried as the module says; a 2xx answer or an engine error."""
        payload = msgspec.json.encode(body)
        attempt = 0
        while True:
            try:
                answer = await self._send("POST", path, payload, deadline)
            except (httpx.TimeoutException, TimeoutError) as exc:
                failure: Exception = BackendTimeout(
                    f"the remote {self.url} did not answer {path} within "
                    f"{deadline.seconds:g} s (REMOTE_TIMEOUT_S)"
                )
                retry_after = None
                cause: Exception | None = exc
            except httpx.TransportError as exc:
                failure = RemoteUnreachable(self.url, describe_transport_error(exc))
                retry_after = None
                cause = exc
            else:
                if 200 <= answer.status < 300:
                    return answer
                failure = self._refusal(path, answer)
                if answer.status not in _RETRIED_STATUS:
                    raise failure
                retry_after = _retry_after(answer.headers)
                cause = None
            pause = _backoff(attempt, retry_after)
            if attempt >= self._retries or pause >= deadline.remaining():
                raise failure from cause
            attempt += 1
            self.retried += 1
            log.debug("retrying %s%s in %.2f s: %s", self.url, path, pause, failure)
            await asyncio.sleep(pause)

    async def _send(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        deadline: Deadline,
        *,
        cache: bool = True,
    ) -> Answer:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise TimeoutError
        # The wait for a slot counts against the deadline too.
        async with asyncio.timeout(remaining):
            async with self._slots:
                self.in_flight += 1
                self.requests += 1
                try:
                    remaining = deadline.remaining()
                    response = await self._http.request(
                        method,
                        self._url(path, cache),
                        content=payload,
                        timeout=httpx.Timeout(
                            remaining, connect=min(remaining, _CONNECT_TIMEOUT_S)
                        ),
                    )
                finally:
                    self.in_flight -= 1
        return Answer(response.status_code, response.headers, response.content, self.url, path)

    def _url(self, path: str, cache: bool = True) -> httpx.URL:
        """``path`` under the base URL; ``cache=False`` for paths seen once (a job's id)."""
        url = self._urls.get(path)
        if url is None:
            base = self._http.base_url  # httpx keeps a trailing slash on it
            url = base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode("ascii"))
            if cache:
                self._urls[path] = url
        return url

    def _refusal(self, path: str, answer: Answer) -> Exception:
        message = remote_message(answer.content)
        status = answer.status
        client_fault = _CLIENT_FAULT.get(status)
        if client_fault is not None:
            return client_fault(f"the remote {self.url} refused the input: {message}")
        if status == 429:
            return Overloaded(
                f"the remote {self.url} is overloaded: {message}",
                retry_after=_retry_after(answer.headers) or 1,
            )
        if status == 503:
            return Unavailable(
                f"the remote {self.url} is unavailable: {message}",
                retry_after=_retry_after(answer.headers),
            )
        hint = " (check REMOTE_API_KEY)" if status in (401, 403) else ""
        return BackendFailure(
            f"the remote {self.url} answered {path} with HTTP {status}{hint}: {message}"
        )


def remote_message(content: bytes) -> str:
    """The message in a TEI (``{"error": str}``), Infinity/FastAPI (``{"detail": ...}``) or
    OpenAI-style (``{"error": {"message"}}``) error body; else the start of the body."""
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return content[:200].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, str):
            return error
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            where = ".".join(str(part) for part in first.get("loc", []))
            return f"{where}: {first.get('msg', '')}".strip(": ")
    return msgspec.json.encode(body)[:200].decode("utf-8", "replace")


def _retry_after(headers: httpx.Headers) -> int | None:
    value = headers.get("retry-after", "")
    return int(value) if value.isdigit() else None


def _backoff(attempt: int, retry_after: int | None) -> float:
    if retry_after is not None:
        return float(retry_after)
    step: float = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2.0**attempt)
    # Equal jitter: never zero, and callers that failed together do not retry together.
    jitter = random.uniform(0, step / 2)  # noqa: S311 - jitter, not security
    return step / 2 + jitter


def describe_transport_error(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def together(calls: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """``calls`` at once (the client bounds what is in flight), answers in order; the first
    failure cancels the rest."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
