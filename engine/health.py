"""Whether the engine can answer: its backends started, their models fit, their health.

Kept apart from the operations (``engine/inference.py``): the start-up state, the check
of the models against the settings once they load, and the aggregation ``/health`` and
``/metrics`` read are asked for by the process around the engine, not by a request. A
request asks only :meth:`Readiness.check`: answer, or 503 with why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from engine.backend import BackendHealth
from engine.errors import StartupError, Unavailable, without_paths
from engine.router import CHAIN_SETTING, Router
from engine.settings import Settings
from engine.types import Operation

__all__ = ["EngineHealth", "HealthStatus", "Readiness", "check_models"]

HealthStatus = Literal["ok", "loading", "degraded"]
# Seconds a client is told to wait while models load.
_LOADING_RETRY_AFTER = 5


@dataclass(frozen=True, slots=True)
class EngineHealth:
    status: HealthStatus
    chains: dict[Operation, list[str]]
    serving: dict[Operation, str | None]
    backends: dict[str, BackendHealth]
    loaded: dict[Operation, bool]
    error: str | None = None


class Readiness:
    """The router's backends: not started yet, started, or failed to start (and why)."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self.started = False
        self.error: str | None = None

    def failed(self, exc: BaseException, *, debugging: bool) -> None:
        error = str(exc) or type(exc).__name__
        # Clients see it (/health, 503s); the server's layout only when debugging.
        self.error = error if debugging else without_paths(error)

    def check(self, operation: Operation) -> None:
        """Refuses a call for ``operation`` that no backend can answer now: not served, the
        models still loading (with Retry-After), or their start failed."""
        self._router.chain(operation)  # raises Unavailable when the operation is not served
        if not self.started:
            if self.error is not None:
                raise Unavailable(f"the models failed to load: {self.error}")
            raise Unavailable("the models are still loading", retry_after=_LOADING_RETRY_AFTER)

    def health(self) -> EngineHealth:
        router = self._router
        backends = {
            b.name: _with_breaker(b.health(), router.breaker_open(b.name)) for b in router.backends
        }
        # "loading" until every backend has started, even one whose remote is down.
        if self.error is None and not self.started:
            status: HealthStatus = "loading"
        elif self.error is not None or not all(h.healthy for h in backends.values()):
            status = "degraded"
        else:
            status = "ok"
        operations = sorted(router.operations)
        return EngineHealth(
            status=status,
            chains={op: [b.name for b in router.chain(op)] for op in operations},
            serving={op: router.serving(op) for op in operations},
            backends=backends,
            loaded={
                op: self.started and all(backends[b.name].loaded for b in router.chain(op))
                for op in operations
            },
            error=self.error,
        )


def check_models(settings: Settings, router: Router) -> None:
    """Dimensions against EMBEDDING_SIZE and across each chain, for the backends that
    are up; a remote that is down checks its own when it comes back."""
    for op in (Operation.EMBED, Operation.LEXICAL_COLBERT):
        if op not in router.operations:
            continue
        seen: dict[int, str] = {}
        for backend in router.chain(op):
            if not backend.health().loaded:
                continue
            info = backend.model_info(op)
            expected = settings.embedding_size
            if expected is not None and info.dimension != expected:
                raise StartupError(
                    f"EMBEDDING_SIZE={settings.embedding_size} but {info.name} "
                    f"produces {info.dimension}-dimensional vectors ({backend.name} backend)"
                )
            if info.dimension is not None:
                seen.setdefault(info.dimension, f"{backend.name} ({info.name})")
        if len(seen) > 1:
            found = ", ".join(f"{who}: {dim}" for dim, who in seen.items())
            raise StartupError(
                f"{CHAIN_SETTING[op]}: its backends produce vectors of different "
                f"dimensions ({found}); falling back from one to another would mix "
                "vector spaces"
            )


def _with_breaker(health: BackendHealth, breaker_open: bool) -> BackendHealth:
    if not breaker_open:
        return health
    breaker = "circuit open after repeated failures; skipped until its cool-down ends"
    return dataclasses.replace(
        health,
        healthy=False,
        detail=f"{breaker}; {health.detail}" if health.detail else breaker,
    )
