"""The service, over HTTP only: what the retrieval tools ask of a running ``bge-serve``
(here or on a remote GPU host), with its overload answers honoured.

A 429 or 503 is retried after the ``Retry-After`` it carries (a loading or busy
service asks for patience, not failure), a dropped connection after a short
backoff; anything else is an error naming the route and the service's message.
Every call has one deadline, ``timeout_s`` (``--service-timeout``), that its retries
and waits count against: a dead, hung or always-busy service is given up on after
it, not after however many retries fit in a backoff schedule.
"""

from __future__ import annotations

import asyncio
import base64
import random
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import httpx
import msgspec
import numpy as np

__all__ = ["DEFAULT_TIMEOUT_S", "Embedded", "ServiceClient", "ServiceError", "SparseVector"]

T = TypeVar("T")

_RETRY_STATUSES = frozenset({429, 503})
_MAX_WAIT_S = 30.0
DEFAULT_TIMEOUT_S = 30.0
# What the last connection attempt before a deadline is left: a refused connection
# is answered at once, a dropped one within a round trip.
_LAST_TRY_S = 0.1


class ServiceError(RuntimeError):
    """The service refused or failed a request for good."""


class SparseVector(msgspec.Struct, frozen=True):
    indices: list[int]
    values: list[float]
    # The space the indices are in, as the service says (retrieval.space).
    mapping: str | None = None
    index_space: int | None = None


# A vector as the service writes it: numbers (integers for uint8), or base64 of
# little-endian float32 (``base64``) or float16 (``float16``).
_Row = list[float] | str


class _Item(msgspec.Struct):
    index: int
    dense: _Row | None = None
    embedding: _Row | None = None
    sparse: SparseVector | None = None
    colbert: list[_Row] | None = None


class _Items(msgspec.Struct):
    data: list[_Item]


class _Ranked(msgspec.Struct):
    index: int
    relevance_score: float


class _Ranking(msgspec.Struct):
    results: list[_Ranked]


class _M3Scored(msgspec.Struct):
    index: int
    combined: float = msgspec.field(name="colbert+sparse+dense")


class _M3Scores(msgspec.Struct):
    results: list[_M3Scored]


@dataclass(frozen=True, slots=True)
class Embedded:
    """One text's vectors; ``sparse`` and ``colbert`` only where asked and served."""

    dense: list[float]
    sparse: SparseVector | None = None
    colbert: list[list[float]] | None = None


class ServiceClient:
    """Async client of one service; at most ``concurrency`` requests in flight, each
    answered or given up on within ``timeout_s``, retries included."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        concurrency: int = 4,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency),
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout_s = timeout_s

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    async def served(self, *, wait_s: float = 600.0) -> set[str]:
        """The operations the service serves (``embed``, ``lexical_colbert``, ``rerank``),
        once it has loaded its models (waiting up to ``wait_s``)."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            try:
                async with asyncio.timeout(self._timeout_s):
                    response = await self._http.get("/health")
            except (TimeoutError, httpx.TimeoutException):
                raise ServiceError(self._no_answer("/health")) from None
            except httpx.TransportError as exc:
                # At the start a refused connection is a wrong URL or a service not
                # started: said at once, not retried.
                raise ServiceError(
                    f"cannot reach the service at {self._http.base_url}: {exc!r}"
                ) from exc
            if response.status_code == 401:
                raise ServiceError("the service wants an API key: set BGE_API_KEY")
            try:
                health = response.json()
            except ValueError:
                health = None
            if not isinstance(health, dict):
                raise ServiceError(
                    f"{self._http.base_url}/health answered {response.status_code} without "
                    "a bge-serve health object: is the URL a bge-serve?"
                )
            if health.get("status") != "loading":
                routes = set(health.get("routes", {}))
                # A service from before the rename calls its lexical and ColBERT chain "sparse".
                if "sparse" in routes:
                    routes = (routes - {"sparse"}) | {"lexical_colbert"}
                return routes
            if asyncio.get_running_loop().time() > deadline:
                raise ServiceError(f"the service was still loading its models after {wait_s:g} s")
            await asyncio.sleep(2)

    async def embed(
        self,
        texts: list[str],
        *,
        sparse: bool = True,
        colbert: bool = False,
        encoding_format: str = "float",
        colbert_max_tokens: int | None = None,
    ) -> list[Embedded]:
        """Dense vectors, plus sparse (and ColBERT) from the same forward pass, written as
        ``encoding_format`` asks (``float``, ``base64``, ``float16``, ``uint8``... as
        numbers here); ``colbert_max_tokens`` prunes each text's ColBERT rows."""
        body: dict[str, Any] = {"input": texts}
        if encoding_format != "float":
            body["encoding_format"] = encoding_format
        if sparse or colbert:
            body["return_colbert"] = colbert
            if colbert and colbert_max_tokens is not None:
                body["colbert_max_tokens"] = colbert_max_tokens
            items = await self._post("/v1/hybrid-embeddings", body, _Items)
        else:
            items = await self._post("/v1/embeddings", body, _Items)
        rows = sorted(items.data, key=lambda item: item.index)
        if len(rows) != len(texts):
            raise ServiceError(f"the service answered {len(rows)} vectors for {len(texts)} texts")
        return [
            Embedded(
                dense=_numbers(
                    row.dense if row.dense is not None else row.embedding or [], encoding_format
                ),
                sparse=row.sparse,
                colbert=[_numbers(r, encoding_format) for r in row.colbert]
                if row.colbert is not None
                else None,
            )
            for row in rows
        ]

    async def m3_score(self, query: str, documents: list[str]) -> list[float]:
        """Each document's bge-m3 three-way score (``colbert+sparse+dense``, the default
        weights), in the documents' order."""
        body = {"query": query, "documents": documents}
        scored = await self._post("/v1/m3-score", body, _M3Scores)
        scores = [0.0] * len(documents)
        for result in scored.results:
            scores[result.index] = result.combined
        return scores

    async def rerank(self, query: str, documents: list[str]) -> list[float]:
        """Each document's cross-encoder score, in the documents' order."""
        body = {"query": query, "documents": documents, "top_n": len(documents)}
        ranking = await self._post("/v1/rerank", body, _Ranking)
        scores = [0.0] * len(documents)
        for ranked in ranking.results:
            scores[ranked.index] = ranked.relevance_score
        return scores

    async def _post(self, route: str, body: dict[str, Any], kind: type[T]) -> T:
        async with self._slots:
            clock = asyncio.get_running_loop().time
            deadline = clock() + self._timeout_s
            attempt = 0
            # Why the last try failed: what is said if the deadline then cuts the next.
            failed: str | None = None
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        response = await self._http.post(route, json=body)
                except (TimeoutError, httpx.TimeoutException):
                    raise ServiceError(failed or self._no_answer(route)) from None
                except httpx.TransportError as exc:
                    # Dropped or refused: the service may be restarting, so it gets
                    # tries until the deadline, the last one just before it.
                    failed = (
                        f"the service at {self._http.base_url} could not be reached on "
                        f"{route}; gave up after {self._timeout_s:g} s "
                        f"(--service-timeout): {exc!r}"
                    )
                    wait = min(_backoff(attempt), deadline - clock() - _LAST_TRY_S)
                else:
                    status = response.status_code
                    if status == 200:
                        return _decoded(route, response, kind)
                    if status not in _RETRY_STATUSES:
                        raise ServiceError(f"{route} answered {status}: {_message(response)}")
                    failed = (
                        f"{route} answered {status} until the {self._timeout_s:g} s "
                        f"deadline (--service-timeout): {_message(response)}"
                    )
                    # A wait asked for past the deadline is not waited for in vain.
                    wait = _retry_after(response, attempt)
                if wait <= 0 or clock() + wait >= deadline:
                    raise ServiceError(failed)
                await asyncio.sleep(wait)
                attempt += 1

    def _no_answer(self, route: str) -> str:
        return (
            f"the service at {self._http.base_url} did not answer {route} within "
            f"{self._timeout_s:g} s (--service-timeout)"
        )


def _numbers(row: _Row, encoding_format: str) -> list[float]:
    """A row as numbers: base64 strings are float16 bytes when ``float16`` was asked,
    float32 bytes otherwise."""
    if not isinstance(row, str):
        return row
    kind = "<f2" if encoding_format == "float16" else "<f4"
    values: list[float] = np.frombuffer(base64.b64decode(row), kind).tolist()
    return values


def _decoded(route: str, response: httpx.Response, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(response.content, type=kind)
    except msgspec.MsgspecError as exc:
        raise ServiceError(f"{route} answered 200 with what no bge-serve sends: {exc}") from None


def _backoff(attempt: int) -> float:
    # Jitter (not a secret): clients that failed together retry apart.
    return min(_MAX_WAIT_S, 0.5 * 2.0**attempt) * random.uniform(1, 1.5)  # noqa: S311


def _retry_after(response: httpx.Response, attempt: int) -> float:
    try:
        asked = float(response.headers.get("retry-after", ""))
    except ValueError:
        return _backoff(attempt)
    return min(_MAX_WAIT_S, max(asked, 0.1)) * random.uniform(1, 1.2)  # noqa: S311


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return response.text[:200]
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(error)
