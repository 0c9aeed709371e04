"""The service, through ``bge_client``: what the retrieval tools ask of a running
``bge-serve`` (here or on a remote GPU host), and how its failures read in their output.

``bge_client.AsyncClient`` does the HTTP: a 429 or 503 is retried after the
``Retry-After`` it carries, a dropped connection after a short backoff, all within one
deadline per call, ``timeout_s`` (``--service-timeout``), so a dead, hung or always-busy
service is given up on after it. The tools cut their own batches, so it is made with
``read_health=False``: each call is one request, and the first request is the first
call (a hung service is named by the route it hung on). Here: the wait while the
service loads, each text's vectors as one ``Embedded`` in the datatype a collection
stores, and bge-client's errors said as one ``ServiceError`` line each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, TypeVar

from bge_client import (
    ApiError,
    AsyncClient,
    AuthenticationError,
    BgeError,
    ConnectionFailedError,
    DeadlineExceededError,
    Health,
    SparseSpace,
    SparseSpaceMismatch,
    SparseVector,
    WireFormat,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Embedded",
    "ServiceClient",
    "ServiceError",
    "SparseVector",
    "VectorDtype",
]

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
# What a collection stores dense and ColBERT vectors as (retrieval.vector_types).
VectorDtype = Literal["float32", "float16", "uint8"]
# How often a service still loading its models is asked again.
_LOADING_POLL_S = 2.0
# The statuses bge-client retries until the deadline: one raised was the last refusal.
_RETRIED = frozenset({429, 503})


class ServiceError(RuntimeError):
    """The service refused or failed a request for good."""


@dataclass(frozen=True, slots=True)
class Embedded:
    """One text's vectors; ``sparse`` and ``colbert`` only where asked and served."""

    dense: list[float]
    sparse: SparseVector | None = None
    colbert: list[list[float]] | None = None


class ServiceClient:
    """Async client of one service; at most ``concurrency`` requests in flight, each
    answered or given up on within ``timeout_s``, retries included. Its sparse vectors
    are all in one index space, the first answer's (``sparse_space``)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        concurrency: int = 4,
    ) -> None:
        self._bge = AsyncClient(
            url, api_key=api_key, timeout=timeout_s, read_health=False, concurrency=concurrency
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
        await self._bge.aclose()

    async def served(self, *, wait_s: float = 600.0) -> set[str]:
        """The operations the service serves (``embed``, ``lexical_colbert``, ``rerank``),
        once it has loaded its models (waiting up to ``wait_s``)."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            health = await self._health()
            if health.status != "loading":
                routes = set(health.routes)
                # A service from before the rename calls its lexical and ColBERT chain "sparse".
                if "sparse" in routes:
                    routes = (routes - {"sparse"}) | {"lexical_colbert"}
                return routes
            if asyncio.get_running_loop().time() > deadline:
                raise ServiceError(f"the service was still loading its models after {wait_s:g} s")
            await asyncio.sleep(_LOADING_POLL_S)

    async def sparse_space(self) -> SparseSpace | None:
        """The index space of the service's sparse answers: the first one's (None before
        any, where the service reports none)."""
        return await self._asked(self._bge.sparse_space)

    async def embed(
        self,
        texts: list[str],
        *,
        sparse: bool = True,
        colbert: bool = False,
        dtype: VectorDtype = "float32",
        colbert_max_tokens: int | None = None,
    ) -> list[Embedded]:
        """Dense vectors, plus sparse (and ColBERT) from the same forward pass, as the
        service writes them in ``dtype`` (``uint8``: its integers, as numbers);
        ``colbert_max_tokens`` prunes each text's ColBERT rows."""
        pruning = colbert_max_tokens if colbert else None
        bge = self._bge
        if (sparse or colbert) and dtype == "uint8":
            integers = await self._asked(
                lambda: bge.hybrid_quantized(
                    texts, "uint8", colbert=colbert, colbert_max_tokens=pruning
                )
            )
            return [
                Embedded(
                    dense=_numbers(v.dense),
                    sparse=v.sparse,
                    colbert=[_numbers(row) for row in v.colbert] if v.colbert is not None else None,
                )
                for v in integers.vectors
            ]
        if sparse or colbert:
            hybrid = await self._asked(
                lambda: bge.hybrid(
                    texts,
                    colbert=colbert,
                    colbert_max_tokens=pruning,
                    encoding_format=_wire(dtype),
                )
            )
            return [Embedded(v.dense, v.sparse, v.colbert) for v in hybrid.vectors]
        if dtype == "uint8":
            quantized = await self._asked(lambda: bge.embed_quantized(texts, "uint8"))
            return [Embedded(_numbers(v)) for v in quantized.vectors]
        dense = await self._asked(lambda: bge.embed(texts, encoding_format=_wire(dtype)))
        return [Embedded(v) for v in dense.vectors]

    async def m3_score(self, query: str, documents: list[str]) -> list[float]:
        """Each document's bge-m3 three-way score (``colbert+sparse+dense``, the default
        weights), in the documents' order."""
        scored = await self._asked(lambda: self._bge.m3_score(query, documents))
        return [result.colbert_sparse_dense for result in scored.results]

    async def rerank(self, query: str, documents: list[str]) -> list[float]:
        """Each document's cross-encoder score, in the documents' order."""
        ranking = await self._asked(lambda: self._bge.rerank(query, documents))
        scores = [0.0] * len(documents)
        for ranked in ranking.results:
            scores[ranked.index] = ranked.score
        return scores

    async def _health(self) -> Health:
        try:
            # One try: at the start a refused connection is a wrong URL or a service not
            # started, said at once; a hung one is given up on after the deadline.
            return await self._bge.health(retry=False)
        except AuthenticationError:
            raise ServiceError("the service wants an API key: set BGE_API_KEY") from None
        except ConnectionFailedError as exc:
            raise ServiceError(
                f"cannot reach the service at {self._bge.base_url}: {exc.__cause__!r}"
            ) from exc
        except SparseSpaceMismatch:
            raise
        except BgeError as exc:
            raise ServiceError(self._said(exc)) from exc

    async def _asked(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._slots:
            try:
                return await call()
            except SparseSpaceMismatch:
                raise  # its own message says what to set, and it is a ValueError: exit 1
            except BgeError as exc:
                raise ServiceError(self._said(exc)) from exc

    def _said(self, error: BgeError) -> str:
        """bge-client's error as the tools say it: the service, the route, the deadline
        and the flag that sets it."""
        deadline = f"{self._timeout_s:g} s"
        if isinstance(error, DeadlineExceededError):
            return (
                f"the service at {self._bge.base_url} did not answer {error.route} within "
                f"{deadline} (--service-timeout)"
            )
        if isinstance(error, ConnectionFailedError):
            return (
                f"the service at {self._bge.base_url} could not be reached on {error.route}; "
                f"gave up after {deadline} (--service-timeout): {error.__cause__!r}"
            )
        if isinstance(error, ApiError) and error.status in _RETRIED:
            return (
                f"{error.route} answered {error.status} until the {deadline} deadline "
                f"(--service-timeout): {error.message}"
            )
        # Any other refusal ("/v1/rerank answered 422: ...") or a body no bge-serve sends.
        return str(error)


def _wire(dtype: VectorDtype) -> WireFormat:
    # float32 as base64: its exact bytes, a quarter of the JSON numbers' size.
    return "float16" if dtype == "float16" else "base64"


def _numbers(integers: list[int]) -> list[float]:
    return [float(value) for value in integers]
