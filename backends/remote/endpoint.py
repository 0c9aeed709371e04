"""One remote URL: what it is, whether it is up, and calls admitted and split to its limit.

A remote that cannot be reached (at start-up or later) is marked down: calls
fail fast with Unavailable, so the router falls through to the next backend at
once instead of waiting out timeouts, while a background task probes the remote
every REMOTE_PROBE_INTERVAL_S until it answers again.

Calls are admitted as every backend admits them (engine/admission.py): at most
MAX_QUEUED_REQUESTS at once per URL, waiting or running, and one more is
answered 429 with Retry-After; of those admitted, at most REMOTE_MAX_CONCURRENCY
requests are in flight to the remote (the client's bound), the rest wait their
turn within their deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import httpx
import msgspec

from backends.remote.contract import ProbeFailed, Remote, RemoteChanged
from backends.remote.kinds import KINDS
from backends.remote.transport import (
    Deadline,
    RemoteUnreachable,
    TransportFactory,
    describe_transport_error,
    together,
)
from engine.admission import Admission
from engine.errors import EngineError, InputTooLarge, StartupError, Unavailable
from engine.router import CHAIN_SETTING
from engine.settings import RemoteKind, Settings
from engine.types import ModelInfo, Operation

__all__ = ["Endpoint"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Item = TypeVar("Item")

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
        # What the remote is probed as: REMOTE_KIND, then (for auto) the kind found.
        self._kind: RemoteKind = settings.remote_kind
        self.client = KINDS[self._kind].client(
            url,
            api_key=settings.remote_api_key,
            max_concurrency=settings.remote_max_concurrency,
            retries=settings.remote_retries,
            transport=transport,
        )
        self.url = self.client.url
        self.admission = Admission(settings.max_queued_requests, f"the remote {self.url}")
        self.remote: Remote | None = None
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
        return self.remote is not None and self.down_reason is None

    def describe(self) -> str:
        if self.remote is None:
            return f"{self.url}: {self.down_reason}"
        state = f"down: {self.down_reason}" if self.down_reason else "up"
        return f"{self.url}: {self.remote.describe()} ({state})"

    def model_info(self, operation: Operation) -> ModelInfo:
        if self.remote is None or operation not in self.remote.offer.models:
            raise Unavailable(f"the remote {self.url} has not been reached yet")
        return self.remote.offer.models[operation]

    def ready(self) -> Remote:
        """The remote, when it is up; Unavailable (with when to retry) when it is not."""
        if self.remote is None or self.down_reason is not None:
            raise Unavailable(
                f"the remote {self.url} is down ({self.down_reason}); probing it every "
                f"{self._settings.remote_probe_interval_s:g} s (REMOTE_PROBE_INTERVAL_S)",
                retry_after=max(1, round(self._settings.remote_probe_interval_s)),
            )
        return self.remote

    # -- calls -----------------------------------------------------------------------

    async def call(
        self,
        items: Sequence[Item],
        kind: str,
        send: Callable[[Remote, Sequence[Item], Deadline], Awaitable[T]],
    ) -> list[T]:
        """``send`` of chunks of ``items`` no larger than the remote takes, sent at once
        (the client bounds what is in flight), answers in order; the first failure
        cancels the rest. One admission and one deadline cover them all."""
        remote = self.ready()
        with self.admission.admit():
            deadline = Deadline(self._settings.remote_timeout_s)
            limit = remote.offer.capabilities.max_batch_size
            size = min(limit, self._fits.get(kind, limit))

            async def fitted(chunk: Sequence[Item]) -> list[T]:
                try:
                    return [await send(remote, chunk, deadline)]
                except InputTooLarge:
                    if not remote.halves_too_large or len(chunk) < 2:
                        raise
                half = (len(chunk) + 1) // 2
                if half < self._fits.get(kind, limit):
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

    # -- probing ---------------------------------------------------------------------

    async def _probe(self) -> None:
        """Find out what the remote is and serves; raises ProbeFailed or StartupError."""
        deadline = Deadline(min(self.client.probe_timeout_s, self._settings.remote_timeout_s))
        try:
            remote = await KINDS[self._kind].probe(self.client, self._settings, deadline)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise ProbeFailed(_transport_reason(exc, deadline.seconds)) from exc
        except (EngineError, msgspec.MsgspecError) as exc:
            raise ProbeFailed(str(exc)) from exc
        self._check(remote)
        self._kind = remote.kind
        was_down = self.down_reason != _NOT_PROBED
        self.remote = remote
        self.down_reason = None
        if was_down:  # as loud as the outage it ends
            log.warning("remote %s: %s - back up", self.url, remote.describe())
        else:
            log.info("remote %s: %s", self.url, remote.describe())

    def _check(self, remote: Remote) -> None:
        offer = remote.offer
        for operation in sorted(self.operations):
            if operation not in offer.capabilities.operations:
                why = offer.missing.get(operation, "")
                raise StartupError(
                    f"{CHAIN_SETTING[operation]}: the remote backend cannot serve "
                    f"{operation.described}: "
                    f"{self.url} is {remote.describe()}" + (f"; {why}" if why else "")
                )
        expected = self._settings.embedding_size
        for operation in (Operation.EMBED, Operation.LEXICAL_COLBERT):
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


def _transport_reason(exc: Exception, seconds: float) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"no answer within {seconds:g} s"
    return f"unreachable: {describe_transport_error(exc)}"
