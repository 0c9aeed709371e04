"""One remote URL: what it is, whether it is up, and requests split to its batch limit.

A remote that cannot be reached (at start-up or later) is marked down: calls
fail fast with Unavailable, so the router falls through to the next backend at
once instead of waiting out timeouts, while a background task probes the remote
every REMOTE_PROBE_INTERVAL_S until it answers again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import httpx
import msgspec
import numpy as np

from backends.fingerprint import remote_fingerprint
from backends.remote.dialect import (
    KIND_NAMES,
    Dialect,
    Kind,
    Offer,
    ProbeFailed,
    RemoteChanged,
    expect_ok,
    together,
)
from backends.remote.infinity import InfinityDialect
from backends.remote.peer import PeerDialect
from backends.remote.runpod import RunpodClient, RunpodDialect
from backends.remote.tei import TeiDialect
from backends.remote.transport import (
    Deadline,
    RemoteClient,
    RemoteUnreachable,
    TransportFactory,
    describe_transport_error,
)
from engine.errors import EngineError, InputTooLarge, StartupError, Unavailable
from engine.router import CHAIN_SETTING
from engine.settings import Settings
from engine.types import (
    DEFAULT_OPTIONS,
    EncodeOptions,
    Encoding,
    ModelInfo,
    Operation,
    Output,
    Scores,
    Token,
)

__all__ = ["Endpoint"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Item = TypeVar("Item")

# Probes are small requests; a remote that needs longer than this is not up.
_PROBE_TIMEOUT_S = 10.0
_NOT_PROBED = "not probed yet"


class Endpoint:
    def __init__(
        self,
        url: str,
        operations: frozenset[Operation],
        settings: Settings,
        transport: TransportFactory | None = None,
    ) -> None:
        self._settings = settings
        self.operations = operations
        # A RunPod endpoint is reached through jobs, whatever it then speaks.
        client = RunpodClient if settings.remote_kind == "runpod" else RemoteClient
        self.client = client(
            url,
            api_key=settings.remote_api_key,
            max_concurrency=settings.remote_max_concurrency,
            retries=settings.remote_retries,
            transport=transport,
        )
        self.url = self.client.url
        self._dialect: Dialect | None = None
        self.offer: Offer | None = None
        self.down_reason: str | None = _NOT_PROBED
        self._prober: asyncio.Task[None] | None = None
        # Per kind of call, the most items a remote that answers "too large" for a batch
        # (a RunPod result over its cap) took at once: later calls are split to it.
        self._fits: dict[str, int] = {}

    # -- state -----------------------------------------------------------------------

    async def start(self) -> None:
        """Probe the remote. A remote that does not fit the settings stops the start-up
        (StartupError); one that cannot be reached is marked down and re-probed."""
        try:
            await self._probe()
        except ProbeFailed as exc:
            self._mark_down(str(exc))

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
        await self.client.close()

    @property
    def up(self) -> bool:
        return self.offer is not None and self.down_reason is None

    def describe(self) -> str:
        if self.offer is None:
            return f"{self.url}: {self.down_reason}"
        state = f"down: {self.down_reason}" if self.down_reason else "up"
        return f"{self.url}: {self.offer.describe()} ({state})"

    def model_info(self, operation: Operation) -> ModelInfo:
        if self.offer is None or operation not in self.offer.models:
            raise Unavailable(f"the remote {self.url} has not been reached yet")
        return self.offer.models[operation]

    # -- calls -----------------------------------------------------------------------

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions = DEFAULT_OPTIONS,
    ) -> Encoding:
        served, _ = self._ready()
        if not outputs <= served.outputs:
            wanted = ", ".join(sorted(outputs - served.outputs))
            raise Unavailable(
                f"the remote {self.url} ({served.describe()}) cannot compute {wanted}"
            )
        parts = await self._chunked(
            texts,
            lambda dialect, offer, chunk, deadline: dialect.encode(
                self.client, chunk, outputs, offer, deadline, options
            ),
            "encode " + ",".join(sorted(outputs)),
        )
        return _merge(parts)

    async def score(self, query: str, documents: Sequence[str]) -> Scores:
        parts = await self._chunked(
            documents,
            lambda dialect, offer, chunk, deadline: dialect.score(
                self.client, query, chunk, offer, deadline
            ),
            "score",
        )
        return Scores(
            logits=np.concatenate([p.logits for p in parts]),
            token_count=sum(p.token_count for p in parts),
        )

    async def tokenize(self, texts: Sequence[str]) -> tuple[list[int], ...]:
        parts = await self._chunked(
            texts,
            lambda dialect, offer, chunk, deadline: dialect.tokenize(
                self.client, chunk, offer, deadline
            ),
            "tokenize",
        )
        return tuple(ids for part in parts for ids in part)

    async def tokens(
        self, texts: Sequence[str], add_special_tokens: bool
    ) -> tuple[tuple[Token, ...], ...]:
        parts = await self._chunked(
            texts,
            lambda dialect, offer, chunk, deadline: dialect.tokens(
                self.client, chunk, add_special_tokens, offer, deadline
            ),
            "tokens",
        )
        return tuple(row for part in parts for row in part)

    async def decode(
        self, ids: Sequence[Sequence[int]], skip_special_tokens: bool
    ) -> tuple[str, ...]:
        parts = await self._chunked(
            ids,
            lambda dialect, offer, chunk, deadline: dialect.decode(
                self.client, chunk, skip_special_tokens, offer, deadline
            ),
            "decode",
        )
        return tuple(text for part in parts for text in part)

    async def _chunked(
        self,
        items: Sequence[Item],
        call: Callable[[Dialect, Offer, Sequence[Item], Deadline], Coroutine[Any, Any, T]],
        kind: str,
    ) -> list[T]:
        """``call`` on chunks of ``items`` no larger than the remote takes, sent at once
        (the client bounds what is in flight), answers in order; the first failure
        cancels the rest. One deadline covers them all."""
        offer, dialect = self._ready()
        deadline = Deadline(self._settings.remote_timeout_s)
        size = min(offer.max_batch_size, self._fits.get(kind, offer.max_batch_size))

        async def fitted(chunk: Sequence[Item]) -> list[T]:
            try:
                return [await call(dialect, offer, chunk, deadline)]
            except InputTooLarge:
                if not dialect.halves_too_large or len(chunk) < 2:
                    raise
            half = (len(chunk) + 1) // 2
            if half < self._fits.get(kind, offer.max_batch_size):
                self._fits[kind] = half
                log.info(
                    "remote %s refused %d items at once as too large (%s); sending %d at most",
                    self.url,
                    len(chunk),
                    kind,
                    half,
                )
            halves = await together([fitted(chunk[:half]), fitted(chunk[half:])])
            return [part for parts in halves for part in parts]

        try:
            if len(items) <= size:  # the usual case: no task to spawn
                return await fitted(items)
            chunks = [items[start : start + size] for start in range(0, len(items), size)]
            return [part for parts in await together(map(fitted, chunks)) for part in parts]
        except RemoteUnreachable as exc:
            self._mark_down(f"unreachable: {exc.reason}")
            raise
        except RemoteChanged as exc:
            self._mark_down(exc.message)
            raise

    def _ready(self) -> tuple[Offer, Dialect]:
        if self.offer is None or self._dialect is None or self.down_reason is not None:
            raise Unavailable(
                f"the remote {self.url} is down ({self.down_reason}); probing it every "
                f"{self._settings.remote_probe_interval_s:g} s (REMOTE_PROBE_INTERVAL_S)",
                retry_after=max(1, round(self._settings.remote_probe_interval_s)),
            )
        return self.offer, self._dialect

    # -- probing ---------------------------------------------------------------------

    async def _probe(self) -> None:
        """Find out what the remote is and serves; raises ProbeFailed or StartupError."""
        timeout = self._settings.remote_timeout_s
        # A RunPod endpoint scaled to zero answers its first job after a cold start.
        if self._settings.remote_kind != "runpod":
            timeout = min(_PROBE_TIMEOUT_S, timeout)
        deadline = Deadline(timeout)
        try:
            dialect = self._dialect or await self._identify(deadline)
            offer = await dialect.probe(self.client, deadline)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise ProbeFailed(_transport_reason(exc, deadline.seconds)) from exc
        except (EngineError, msgspec.MsgspecError) as exc:
            raise ProbeFailed(str(exc)) from exc
        self._check(offer)
        self._dialect = dialect
        was_down = self.down_reason != _NOT_PROBED
        self.offer = _fingerprinted(offer, self.url)
        self.down_reason = None
        if was_down:  # as loud as the outage it ends
            log.warning("remote %s: %s - back up", self.url, offer.describe())
        else:
            log.info("remote %s: %s", self.url, offer.describe())

    async def _identify(self, deadline: Deadline) -> Dialect:
        kind = self._settings.remote_kind
        if kind == "auto":
            kind = await identify(self.client, deadline)
            log.info("remote %s: REMOTE_KIND=auto found %s", self.url, KIND_NAMES[kind])
        return self._dialect_for(kind)

    def _dialect_for(self, kind: Kind) -> Dialect:
        settings = self._settings
        if kind == "tei":
            return TeiDialect(truncate=settings.truncate)
        if kind == "infinity":
            return InfinityDialect(
                embed_model=settings.remote_model, rerank_model=settings.remote_rerank_model
            )
        if kind == "runpod":
            return RunpodDialect()
        return PeerDialect()

    def _check(self, offer: Offer) -> None:
        for operation in sorted(self.operations):
            if operation not in offer.operations:
                why = offer.missing.get(operation, "")
                raise StartupError(
                    f"{CHAIN_SETTING[operation]}: the remote backend cannot serve {operation}: "
                    f"{self.url} is {offer.describe()}" + (f"; {why}" if why else "")
                )
        expected = self._settings.embedding_size
        for operation in (Operation.EMBED, Operation.SPARSE):
            info = offer.models.get(operation)
            if expected is None or info is None or operation not in self.operations:
                continue
            if info.dimension is not None and info.dimension != expected:
                raise StartupError(
                    f"EMBEDDING_SIZE={expected} but the remote {self.url} ({info.name}) "
                    f"produces {info.dimension}-dimensional vectors"
                )

    def _mark_down(self, reason: str) -> None:
        if self.down_reason in (None, _NOT_PROBED):
            log.warning("remote %s is down: %s", self.url, reason)
        self.down_reason = reason
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._reprobe(), name=f"probe {self.url}")

    async def _reprobe(self) -> None:
        interval = self._settings.remote_probe_interval_s
        reported = ""
        while True:
            await asyncio.sleep(interval)
            try:
                await self._probe()
            except (ProbeFailed, StartupError) as exc:
                self.down_reason = str(exc)
                if isinstance(exc, StartupError) and str(exc) != reported:
                    # It answers but cannot serve what the chains ask of it: say so once.
                    log.error("remote %s: %s", self.url, exc)
                    reported = str(exc)
                continue
            except Exception as exc:  # a bug in a probe must not end the probing
                log.exception("remote %s: probe failed", self.url)
                self.down_reason = f"probe failed ({type(exc).__name__}); see the service log"
                continue
            return


def _fingerprinted(offer: Offer, url: str) -> Offer:
    """``offer`` with each model's cache fingerprint: what the remote says of itself,
    taken again at every probe (a remote that comes back serving another model is keyed
    apart)."""
    models = {
        operation: dataclasses.replace(
            info, fingerprint=remote_fingerprint(url, offer.kind, offer.version, info)
        )
        for operation, info in offer.models.items()
    }
    return dataclasses.replace(offer, models=models)


async def identify(client: RemoteClient, deadline: Deadline) -> Kind:
    """This service answers ``GET /health`` with its chains; TEI ``GET /info`` with its
    model_id; Infinity ``GET /models`` with a model list."""
    # /health first: a bge-serve answers /info (and /models) in TEI's (and Infinity's) dialect.
    health = await client.get("/health", deadline)
    if _has_keys(health.content, "chains", "backends"):
        return "self"
    if _has_keys(health.content, "jobs", "workers"):
        # RunPod's own GET /health: its workers take jobs, not this service's requests.
        raise StartupError(
            f"the remote {client.url} is a RunPod Serverless endpoint; set REMOTE_KIND=runpod "
            "(and run bge-runpod-worker in it)"
        )
    info = await client.get("/info", deadline)
    if info.status == 200 and _has_keys(info.content, "model_id", "model_type"):
        return "tei"
    models = await client.get("/models", deadline)
    if models.status == 200 and _has_keys(models.content, "data"):
        return "infinity"
    for answer, path in ((info, "/info"), (health, "/health"), (models, "/models")):
        if answer.status in (401, 403, 429) or answer.status >= 500:
            expect_ok(answer, path)  # not up, or not letting us in: not a wrong kind
    raise StartupError(
        f"the remote {client.url} is neither TEI (GET /info), Infinity (GET /models) nor "
        f"bge-serve (GET /health) (they answered HTTP {info.status}, {health.status}, "
        f"{models.status}); check REMOTE_URL or set REMOTE_KIND"
    )


def _has_keys(content: bytes, *keys: str) -> bool:
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return False
    return isinstance(body, dict) and all(key in body for key in keys)


def _transport_reason(exc: Exception, seconds: float) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"no answer within {seconds:g} s"
    return f"unreachable: {describe_transport_error(exc)}"


def _merge(parts: list[Encoding]) -> Encoding:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return Encoding(
        token_count=sum(p.token_count for p in parts),
        dense=np.concatenate([p.dense for p in parts if p.dense is not None])
        if first.dense is not None
        else None,
        lexical=tuple(w for p in parts for w in p.lexical or ())
        if first.lexical is not None
        else None,
        colbert=tuple(m for p in parts for m in p.colbert or ())
        if first.colbert is not None
        else None,
    )
