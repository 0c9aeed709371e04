"""How results are computed: flag (torch), infinity (infinity_emb), remote (HTTP).

Each backend implements :class:`engine.backend.Backend`; they are chosen by name
from one registry (:func:`build_chains`). Imports ``engine`` (types, settings,
errors, the batcher) and third-party libraries; never ``api`` (HTTP is the
layer above) or ``retrieval``.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.backend import Backend
from engine.settings import Settings
from engine.types import Operation

__all__ = ["BACKENDS", "build_chains"]


def _flag(settings: Settings, operations: frozenset[Operation]) -> Backend:
    # Imported on use: torch and transformers take seconds to import.
    from backends.flag import FlagBackend

    return FlagBackend(settings, operations)


def _infinity(settings: Settings, operations: frozenset[Operation]) -> Backend:
    from backends.infinity import InfinityBackend

    return InfinityBackend(settings, operations)


def _remote(settings: Settings, operations: frozenset[Operation]) -> Backend:
    from backends.remote import RemoteBackend

    return RemoteBackend(settings, operations)


BackendFactory = Callable[[Settings, frozenset[Operation]], Backend]

BACKENDS: dict[str, BackendFactory] = {"flag": _flag, "infinity": _infinity, "remote": _remote}


def build_chains(settings: Settings) -> dict[Operation, list[Backend]]:
    """Each operation's chain from settings; one instance per backend name, which loads
    only the models of the operations whose chains name it."""
    configured = {
        Operation.EMBED: settings.embed_backends,
        Operation.LEXICAL_COLBERT: settings.lexical_colbert_chain,
        Operation.RERANK: settings.rerank_backends,
    }
    names = {op: chain for op, chain in configured.items() if chain}
    instances: dict[str, Backend] = {}
    for name in dict.fromkeys(n for chain in names.values() for n in chain):
        served = frozenset(op for op, chain in names.items() if name in chain)
        instances[name] = BACKENDS[name](settings, served)
    return {op: [instances[name] for name in chain] for op, chain in names.items()}
