"""How results are computed. Backends are chosen by name from one registry."""

from __future__ import annotations

from collections.abc import Callable

from engine.backend import Backend
from engine.settings import Settings
from engine.types import Operation

__all__ = ["BACKENDS", "build_routes"]


def _flag(settings: Settings, operations: frozenset[Operation]) -> Backend:
    # Imported on use: torch and transformers take seconds to import.
    from backends.flag import FlagBackend

    return FlagBackend(settings, operations)


BackendFactory = Callable[[Settings, frozenset[Operation]], Backend]

BACKENDS: dict[str, BackendFactory] = {"flag": _flag}


def build_routes(settings: Settings) -> dict[Operation, Backend]:
    """One backend instance per name, serving every operation routed to it."""
    chains: dict[Operation, str] = {op: "flag" for op in Operation}
    instances: dict[str, Backend] = {}
    for name in dict.fromkeys(chains.values()):
        served = frozenset(op for op, chosen in chains.items() if chosen == name)
        instances[name] = BACKENDS[name](settings, served)
    return {op: instances[name] for op, name in chains.items()}
