"""The one contract every backend implements.

A backend computes; it never maps sparse indices, sorts rerank results or
applies top_n. It returns raw token-id weights and raw logits, and the engine
does the rest once, the same way for every backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.telemetry import SizeHistogram
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

__all__ = ["Backend", "BackendHealth", "Capabilities"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Declared up front, before any model loads."""

    operations: frozenset[Operation]
    outputs: frozenset[Output]  # heads one encode() pass can return
    embedding_model: str | None
    reranker_model: str | None
    max_batch_size: int
    # The EncodeOptions fields encode() honours off their defaults ("normalize",
    # "truncate_left"); a backend is never sent a departure it does not list here.
    options: frozenset[str] = frozenset()
    # Why it does not honour the others, by field: what a client is told when no backend
    # of the chain can.
    refusals: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BackendHealth:
    loaded: bool
    healthy: bool
    device: str
    detail: str = ""
    dtype: str = ""  # what its models compute in; "" where not known (a remote)
    stats: Mapping[str, int] = field(default_factory=dict)  # counters, e.g. forward passes
    batch_sizes: Mapping[str, SizeHistogram] = field(default_factory=dict)  # per model


class Backend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def start(self) -> None:
        """Load every model the declared operations need, without blocking the event loop."""

    async def stop(self) -> None: ...

    def health(self) -> BackendHealth: ...

    def model_info(self, operation: Operation) -> ModelInfo:
        """The loaded model behind ``operation``; only valid after load()."""

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions = DEFAULT_OPTIONS,
    ) -> Encoding:
        """Any subset of bge-m3 heads for ``texts`` from one forward pass; ``options``
        departs from the defaults only in what ``capabilities.options`` lists."""

    async def score(self, query: str, documents: Sequence[str]) -> Scores:
        """Raw cross-encoder logits of (query, document) pairs."""

    async def token_ids(self, texts: Sequence[str]) -> tuple[list[int], ...]:
        """Token ids (with special tokens, after truncation) of each text."""

    async def tokens(
        self, texts: Sequence[str], *, add_special_tokens: bool
    ) -> tuple[tuple[Token, ...], ...]:
        """Each text's tokens (embedding tokenizer, not truncated) with their text and offsets."""

    async def decode(
        self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool
    ) -> tuple[str, ...]:
        """The text of each row of token ids (embedding tokenizer)."""
