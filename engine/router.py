"""Per-operation backend chains, with fall-through and a circuit breaker per backend.

A call goes to the first backend in its operation's chain whose breaker is
closed. A transient refusal (overloaded, unavailable) or a backend failure
falls through to the next; a request's own fault (invalid input, too large,
unknown model) does not, since no other backend would answer it differently.
After ``threshold`` consecutive failures a backend is skipped for ``cooldown_s``,
then probed by the next call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from engine.backend import Backend
from engine.errors import BackendFailure, EngineError, Overloaded, StartupError, Unavailable
from engine.telemetry import Telemetry
from engine.types import Operation

__all__ = ["CHAIN_SETTING", "CircuitBreaker", "Router"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CHAIN_SETTING: dict[Operation, str] = {
    Operation.EMBED: "EMBED_BACKENDS",
    Operation.LEXICAL_COLBERT: "LEXICAL_COLBERT_BACKENDS",
    Operation.RERANK: "RERANK_BACKENDS",
}


@dataclass(slots=True)
class CircuitBreaker:
    threshold: int = 5
    cooldown_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None

    def allows(self, now: float) -> bool:
        return self.opened_at is None or now - self.opened_at >= self.cooldown_s

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = now


class Router:
    def __init__(
        self,
        chains: Mapping[Operation, Sequence[Backend]],
        *,
        breaker_threshold: int = 5,
        breaker_cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
    ) -> None:
        if not chains:
            raise StartupError(
                "no operation is served: EMBED_BACKENDS, LEXICAL_COLBERT_BACKENDS and "
                "RERANK_BACKENDS are all none"
            )
        for operation, chain in chains.items():
            if not chain:
                raise StartupError(
                    f"{CHAIN_SETTING[operation]} is empty: {operation.described} has no backend"
                )
            for backend in chain:
                if operation not in backend.capabilities.operations:
                    raise StartupError(
                        f"{CHAIN_SETTING[operation]}: the {backend.name} backend cannot serve "
                        f"{operation.described}"
                    )
        self._chains = {op: list(chain) for op, chain in chains.items()}
        self.backends: list[Backend] = list(
            {b.name: b for chain in self._chains.values() for b in chain}.values()
        )
        self._breakers = {
            b.name: CircuitBreaker(breaker_threshold, breaker_cooldown_s) for b in self.backends
        }
        self._clock = clock
        self.telemetry = telemetry or Telemetry()

    @property
    def operations(self) -> frozenset[Operation]:
        return frozenset(self._chains)

    def chain(self, operation: Operation) -> list[Backend]:
        chain = self._chains.get(operation)
        if chain is None:
            raise Unavailable(f"{operation.described} is not served by this deployment")
        return chain

    def serving(self, operation: Operation) -> str | None:
        """The backend a call for ``operation`` would go to now, if any."""
        now = self._clock()
        for backend in self.chain(operation):
            # An unhealthy backend (a remote that is down) refuses at once: calls pass it by.
            if self._breakers[backend.name].allows(now) and backend.health().healthy:
                return backend.name
        return None

    def breaker_open(self, name: str) -> bool:
        return self._breakers[name].open

    async def call(self, operation: Operation, work: Callable[[Backend], Awaitable[T]]) -> T:
        last: EngineError | None = None
        telemetry = self.telemetry
        for backend in self.chain(operation):
            breaker = self._breakers[backend.name]
            if not breaker.allows(self._clock()):
                telemetry.fall_throughs[(operation, backend.name)] += 1
                continue
            try:
                result = await work(backend)
            except (Overloaded, Unavailable) as exc:
                last = exc
            except BackendFailure as exc:
                breaker.failure(self._clock())
                last = exc
            except EngineError:
                raise
            except Exception as exc:
                # The client gets a stable message; the traceback goes to the log, not the wire.
                log.exception("the %s backend failed on %s", backend.name, operation)
                breaker.failure(self._clock())
                last = BackendFailure(
                    f"the {backend.name} backend failed ({type(exc).__name__}); see the service log"
                )
            else:
                breaker.success()
                return result
            telemetry.backend_errors[(backend.name, str(last.kind))] += 1
            telemetry.fall_throughs[(operation, backend.name)] += 1
        if last is not None:
            raise last
        raise Unavailable(
            f"every backend for {operation.described} is failing; retry later",
            retry_after=int(min(b.cooldown_s for b in self._breakers.values())),
        )
