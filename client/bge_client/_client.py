"""``Client`` and ``AsyncClient``: the same methods, blocking or awaited, over bge-serve's
native routes.

Both read ``/health`` once, at their first call, for the server's batch limit and its
sparse space (unless made with ``read_health=False``); send each batch with the retries
of ``bge_client._retries`` under one deadline per request (``timeout``); and join the
answers as ``bge_client._plans`` says. ``AsyncClient`` sends up to ``concurrency``
batches of one call at once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import msgspec

from bge_client import _plans
from bge_client._errors import ProtocolError
from bge_client._plans import Plan, Server
from bge_client._retries import Attempts
from bge_client._space import SpaceGuard
from bge_client._types import (
    DenseEmbeddings,
    Health,
    HybridEmbeddings,
    Info,
    M3Scores,
    QuantizedEmbeddings,
    QuantizedFormat,
    QuantizedHybridEmbeddings,
    Ranking,
    SparseEmbeddings,
    SparseSpace,
    Token,
    WireFormat,
)

__all__ = ["DEFAULT_TIMEOUT_S", "DEFAULT_URL", "AsyncClient", "Client"]

DEFAULT_URL = "http://localhost:8011"
DEFAULT_TIMEOUT_S = 60.0
A = TypeVar("A")
R = TypeVar("R")
# /health answers 503 with the same body while loading or degraded.
_HEALTH_STATUSES = frozenset({200, 503})
_JSON = {"content-type": "application/json"}
# What a client that reads no /health knows of the server before an answer: no limit of
# its own on the texts of a request, no model names.
_UNREAD = Server(sys.maxsize, "", "")


def _headers(api_key: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    sent = {"user-agent": "bge-client", **(headers or {})}
    if api_key:
        # The header the openai, cohere and TEI clients send; api/access.py takes it.
        sent["authorization"] = f"Bearer {api_key}"
    return sent


def _decoded(response: httpx.Response, route: str, kind: type[A]) -> A:
    try:
        return msgspec.json.decode(response.content, type=kind)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ProtocolError(
            f"{route} answered {response.status_code} with a body no bge-serve sends "
            f"(is {response.request.url.scheme}://{response.request.url.netloc.decode()} a "
            f"bge-serve?): {exc}"
        ) from None


class _Options:
    """What both clients are made with, checked once."""

    def __init__(
        self,
        timeout: float,
        batch_size: int | None,
        sparse_space: SparseSpace | None,
        read_health: bool,
    ) -> None:
        if timeout <= 0:
            raise ValueError("`timeout` must be > 0 seconds")
        if batch_size is not None and batch_size < 1:
            raise ValueError("`batch_size` must be at least 1")
        self.timeout = timeout
        self.batch_size = batch_size
        self.guard = SpaceGuard(sparse_space)
        self.read_health = read_health
        self.server: Server | None = None

    def known(self, *, needs_health: bool) -> Server | None:
        """What is known of the server, or None where ``/health`` must be read first: at
        the first call, unless the client reads no /health and the call needs nothing
        only /health says (a call of no texts does: its model name and sparse space)."""
        if self.server is not None:
            return self.server
        return None if self.read_health or needs_health else _UNREAD

    def batch(self, server: Server) -> int:
        if self.batch_size is None:
            return server.max_batch_size
        return min(self.batch_size, server.max_batch_size)

    def learn(self, health: Health, base_url: str) -> Server:
        self.guard.server_says(health.sparse_space, base_url)
        server = Server(health.max_batch_size, health.embedding_model, health.reranker_model)
        self.server = server
        return server


class Client:
    """A blocking client of one bge-serve.

    ``url``: the server's base URL. ``api_key``: sent as ``Authorization: Bearer``
    (bge-serve's ``API_KEY``). ``timeout``: seconds each request may take, its retries
    and their waits included (429 and 503 are retried after their ``Retry-After``).
    ``batch_size``: texts per request, at most the server's ``max_batch_size``.
    ``sparse_space``: the sparse index space to hold to (e.g. what a collection
    records); None takes the server's at first contact. ``read_health``: read
    ``/health`` before the first call (default); False sends each call as its texts
    come, cut at ``batch_size`` alone (None: one request per call, the server's 413 if
    over its ``MAX_BATCH_SIZE``), and takes the sparse space from the first answer: for
    a caller that batches for itself, whose first request is then its first call.
    ``transport``: an httpx transport (a proxy's, or ``httpx.MockTransport`` in tests).
    Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        batch_size: int | None = None,
        sparse_space: SparseSpace | None = None,
        read_health: bool = True,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._options = _Options(timeout, batch_size, sparse_space, read_health)
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=_headers(api_key, headers),
            transport=transport,
            # Each request's own deadline (Attempts) bounds it; httpx's is set per try.
            timeout=timeout,
        )

    @property
    def base_url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections; the client cannot be used after."""
        self._http.close()

    # --- The server ----------------------------------------------------------------------

    def health(self, *, retry: bool = True) -> Health:
        """``GET /health``, also while loading (``status`` says so). ``retry=False`` tries
        once, a probe of whether the server is up: one that cannot be reached raises
        ``ConnectionFailedError`` at once, not at the deadline."""
        return self._send("GET", "/health", None, Health, _HEALTH_STATUSES, retry=retry)

    def info(self) -> Info:
        """``GET /info``: the embedding model, its token limit, the sparse space."""
        return self._send("GET", "/info", None, Info)

    def sparse_space(self) -> SparseSpace | None:
        """The sparse space this client holds to: its ``sparse_space``, or the server's
        (read from ``/health`` if not yet known); raises ``SparseSpaceMismatch`` where the
        server reports the same mapping in another index space."""
        self._server(needs_health=self._options.guard.space is None)
        return self._options.guard.space

    # --- The model calls -----------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        encoding_format: WireFormat = "base64",
        dimensions: int | None = None,
    ) -> DenseEmbeddings:
        """bge-m3 dense vectors (``POST /v1/embeddings``), one per text, as floats.

        ``encoding_format`` is how they travel: ``base64`` (default; float32, exact),
        ``float`` (JSON numbers, exact, four times the bytes) or ``float16`` (half the
        bytes of base64, each value rounded to half precision). ``dimensions``: the first
        N, renormalised."""
        server = self._server(needs_health=not texts)
        plan = _plans.dense(
            texts,
            server,
            batch_size=self._options.batch(server),
            wire=encoding_format,
            dimensions=dimensions,
        )
        return self._run(plan)

    def embed_quantized(
        self,
        texts: Sequence[str],
        encoding_format: QuantizedFormat,
        *,
        dimensions: int | None = None,
    ) -> QuantizedEmbeddings:
        """Dense vectors as the server's integers: ``int8``, ``uint8`` (with each vector's
        scale), ``binary`` or ``ubinary`` (bits packed eight to a byte)."""
        server = self._server(needs_health=not texts)
        plan = _plans.quantized(
            texts,
            server,
            batch_size=self._options.batch(server),
            form=encoding_format,
            dimensions=dimensions,
        )
        return self._run(plan)

    def sparse(self, texts: Sequence[str]) -> SparseEmbeddings:
        """bge-m3 lexical weights as sparse vectors in the client's sparse space
        (``POST /v1/sparse-embeddings``)."""
        server = self._server(needs_health=not texts)
        guard = self._options.guard
        return self._run(
            _plans.sparse(texts, server, guard, batch_size=self._options.batch(server))
        )

    def hybrid(
        self,
        texts: Sequence[str],
        *,
        colbert: bool = False,
        colbert_max_tokens: int | None = None,
        encoding_format: WireFormat = "base64",
    ) -> HybridEmbeddings:
        """Dense and sparse vectors (and ColBERT rows with ``colbert``) from one forward
        pass per text (``POST /v1/hybrid-embeddings``). ``colbert_max_tokens``: keep each
        text's ColBERT rows of largest norm, at most that many, in their order (with
        ``colbert`` only). ``encoding_format`` is how dense and ColBERT rows travel, as
        for ``embed``."""
        server = self._server(needs_health=not texts)
        plan = _plans.hybrid(
            texts,
            server,
            self._options.guard,
            batch_size=self._options.batch(server),
            colbert=colbert,
            colbert_max_tokens=colbert_max_tokens,
            wire=encoding_format,
        )
        return self._run(plan)

    def hybrid_quantized(
        self,
        texts: Sequence[str],
        encoding_format: QuantizedFormat,
        *,
        colbert: bool = False,
        colbert_max_tokens: int | None = None,
    ) -> QuantizedHybridEmbeddings:
        """``hybrid`` with the dense vectors and ColBERT rows as the server's integers
        (``int8``, ``uint8`` with each vector's and row's scale, ``binary`` or
        ``ubinary``), the sparse vectors as ever."""
        server = self._server(needs_health=not texts)
        plan = _plans.hybrid_quantized(
            texts,
            server,
            self._options.guard,
            batch_size=self._options.batch(server),
            form=encoding_format,
            colbert=colbert,
            colbert_max_tokens=colbert_max_tokens,
        )
        return self._run(plan)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        raw_scores: bool = False,
    ) -> Ranking:
        """The documents best first by the cross-encoder (``POST /v1/rerank``), cut to
        ``top_n``; scores are the sigmoid of the logit, or the logit with ``raw_scores``."""
        server = self._server(needs_health=not documents)
        plan = _plans.rerank(
            query,
            documents,
            server,
            batch_size=self._options.batch(server),
            top_n=top_n,
            raw_scores=raw_scores,
        )
        return self._run(plan)

    def m3_score(
        self,
        query: str,
        documents: Sequence[str],
        *,
        weights: tuple[float, float, float] | None = None,
    ) -> M3Scores:
        """bge-m3's dense, sparse and ColBERT scores of each document against the query
        and their weighted means (``POST /v1/m3-score``); ``weights`` are ``(dense,
        sparse, colbert)``, the server's default ``(0.4, 0.2, 0.4)``."""
        server = self._server(needs_health=not documents)
        plan = _plans.m3_score(
            query, documents, server, batch_size=self._options.batch(server), weights=weights
        )
        return self._run(plan)

    def tokenize(
        self, texts: Sequence[str], *, add_special_tokens: bool = True
    ) -> list[list[Token]]:
        """Each text's tokens, with their text and byte offsets (``POST /tokenize``)."""
        server = self._server()
        plan = _plans.tokenize(
            texts, batch_size=self._options.batch(server), add_special_tokens=add_special_tokens
        )
        return self._run(plan)

    # --- Sending ---------------------------------------------------------------------------

    def _server(self, *, needs_health: bool = False) -> Server:
        known = self._options.known(needs_health=needs_health)
        return known or self._options.learn(self.health(), self.base_url)

    def _run(self, plan: Plan[A, R]) -> R:
        return plan.finish([self._send("POST", plan.route, b, plan.answer) for b in plan.bodies])

    def _send(
        self,
        method: str,
        route: str,
        body: dict[str, Any] | None,
        kind: type[A],
        ok: frozenset[int] = frozenset({200}),
        *,
        retry: bool = True,
    ) -> A:
        attempts = Attempts(route, self._options.timeout, time.monotonic, retry=retry)
        content = None if body is None else msgspec.json.encode(body)
        while True:
            try:
                response = self._http.request(
                    method,
                    route,
                    content=content,
                    headers=_JSON if content is not None else None,
                    timeout=attempts.remaining(),
                )
            except httpx.TimeoutException:
                attempts.timed_out()
            except httpx.TransportError as exc:
                wait = attempts.unreachable(exc, self.base_url)
            else:
                if response.status_code in ok:
                    return _decoded(response, route, kind)
                wait = attempts.refused(response)
            time.sleep(wait)


class AsyncClient:
    """``Client``'s methods as coroutines (same arguments, same results, same errors),
    with up to ``concurrency`` batches of one call in flight at once.

    It may be used from one event loop after another (``asyncio.run`` twice, a notebook):
    its connections belong to the loop that opened them, so a new loop gets new ones.
    Use it as an async context manager, or ``await aclose()``.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        batch_size: int | None = None,
        sparse_space: SparseSpace | None = None,
        read_health: bool = True,
        concurrency: int = 4,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("`concurrency` must be at least 1")
        self._options = _Options(timeout, batch_size, sparse_space, read_health)
        self._concurrency = concurrency
        self._url = url.rstrip("/")
        self._headers = _headers(api_key, headers)
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        return self._url

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (they are opened again by a later call)."""
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = self._loop = None

    async def health(self, *, retry: bool = True) -> Health:
        """As ``Client.health``."""
        return await self._send("GET", "/health", None, Health, _HEALTH_STATUSES, retry=retry)

    async def info(self) -> Info:
        """``GET /info``: the embedding model, its token limit, the sparse space."""
        return await self._send("GET", "/info", None, Info)

    async def sparse_space(self) -> SparseSpace | None:
        """As ``Client.sparse_space``."""
        await self._server(needs_health=self._options.guard.space is None)
        return self._options.guard.space

    async def embed(
        self,
        texts: Sequence[str],
        *,
        encoding_format: WireFormat = "base64",
        dimensions: int | None = None,
    ) -> DenseEmbeddings:
        """As ``Client.embed``."""
        server = await self._server(needs_health=not texts)
        plan = _plans.dense(
            texts,
            server,
            batch_size=self._options.batch(server),
            wire=encoding_format,
            dimensions=dimensions,
        )
        return await self._run(plan)

    async def embed_quantized(
        self,
        texts: Sequence[str],
        encoding_format: QuantizedFormat,
        *,
        dimensions: int | None = None,
    ) -> QuantizedEmbeddings:
        """As ``Client.embed_quantized``."""
        server = await self._server(needs_health=not texts)
        plan = _plans.quantized(
            texts,
            server,
            batch_size=self._options.batch(server),
            form=encoding_format,
            dimensions=dimensions,
        )
        return await self._run(plan)

    async def sparse(self, texts: Sequence[str]) -> SparseEmbeddings:
        """As ``Client.sparse``."""
        server = await self._server(needs_health=not texts)
        guard = self._options.guard
        return await self._run(
            _plans.sparse(texts, server, guard, batch_size=self._options.batch(server))
        )

    async def hybrid(
        self,
        texts: Sequence[str],
        *,
        colbert: bool = False,
        colbert_max_tokens: int | None = None,
        encoding_format: WireFormat = "base64",
    ) -> HybridEmbeddings:
        """As ``Client.hybrid``."""
        server = await self._server(needs_health=not texts)
        plan = _plans.hybrid(
            texts,
            server,
            self._options.guard,
            batch_size=self._options.batch(server),
            colbert=colbert,
            colbert_max_tokens=colbert_max_tokens,
            wire=encoding_format,
        )
        return await self._run(plan)

    async def hybrid_quantized(
        self,
        texts: Sequence[str],
        encoding_format: QuantizedFormat,
        *,
        colbert: bool = False,
        colbert_max_tokens: int | None = None,
    ) -> QuantizedHybridEmbeddings:
        """As ``Client.hybrid_quantized``."""
        server = await self._server(needs_health=not texts)
        plan = _plans.hybrid_quantized(
            texts,
            server,
            self._options.guard,
            batch_size=self._options.batch(server),
            form=encoding_format,
            colbert=colbert,
            colbert_max_tokens=colbert_max_tokens,
        )
        return await self._run(plan)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        raw_scores: bool = False,
    ) -> Ranking:
        """As ``Client.rerank``."""
        server = await self._server(needs_health=not documents)
        plan = _plans.rerank(
            query,
            documents,
            server,
            batch_size=self._options.batch(server),
            top_n=top_n,
            raw_scores=raw_scores,
        )
        return await self._run(plan)

    async def m3_score(
        self,
        query: str,
        documents: Sequence[str],
        *,
        weights: tuple[float, float, float] | None = None,
    ) -> M3Scores:
        """As ``Client.m3_score``."""
        server = await self._server(needs_health=not documents)
        plan = _plans.m3_score(
            query, documents, server, batch_size=self._options.batch(server), weights=weights
        )
        return await self._run(plan)

    async def tokenize(
        self, texts: Sequence[str], *, add_special_tokens: bool = True
    ) -> list[list[Token]]:
        """As ``Client.tokenize``."""
        server = await self._server()
        plan = _plans.tokenize(
            texts, batch_size=self._options.batch(server), add_special_tokens=add_special_tokens
        )
        return await self._run(plan)

    async def _server(self, *, needs_health: bool = False) -> Server:
        known = self._options.known(needs_health=needs_health)
        return known or self._options.learn(await self.health(), self.base_url)

    async def _run(self, plan: Plan[A, R]) -> R:
        slots = asyncio.Semaphore(self._concurrency)

        async def one(body: dict[str, Any]) -> A:
            async with slots:
                return await self._send("POST", plan.route, body, plan.answer)

        # gather keeps the batches' order, whatever order they are answered in.
        return plan.finish(list(await asyncio.gather(*(one(b) for b in plan.bodies))))

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            # The old loop's connections cannot be closed from this one; they go with it.
            self._http = httpx.AsyncClient(
                base_url=self._url,
                headers=self._headers,
                transport=self._transport,
                timeout=self._options.timeout,
            )
            self._loop = loop
        return self._http

    async def _send(
        self,
        method: str,
        route: str,
        body: dict[str, Any] | None,
        kind: type[A],
        ok: frozenset[int] = frozenset({200}),
        *,
        retry: bool = True,
    ) -> A:
        http = self._client()
        loop = asyncio.get_running_loop()
        attempts = Attempts(route, self._options.timeout, loop.time, retry=retry)
        content = None if body is None else msgspec.json.encode(body)
        while True:
            try:
                # The whole try, not each read, is held to the deadline.
                async with asyncio.timeout_at(attempts.deadline):
                    response = await http.request(
                        method,
                        route,
                        content=content,
                        headers=_JSON if content is not None else None,
                        timeout=attempts.remaining(),
                    )
            except (TimeoutError, httpx.TimeoutException):
                attempts.timed_out()
            except httpx.TransportError as exc:
                wait = attempts.unreachable(exc, self.base_url)
            else:
                if response.status_code in ok:
                    return _decoded(response, route, kind)
                wait = attempts.refused(response)
            await asyncio.sleep(wait)
