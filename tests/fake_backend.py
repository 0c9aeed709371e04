"""An in-memory backend for engine and app tests: deterministic, instant, no model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine import (
    BackendHealth,
    Capabilities,
    Encoding,
    ModelInfo,
    Operation,
    Output,
    Scores,
    TokenWeights,
)

DIM = 8


class FakeBackend:
    """Deterministic vectors from text length; logits from the document's first character."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.loaded = False
        self.calls = 0

    @property
    def name(self) -> str:
        return "fake"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            operations=frozenset(Operation),
            outputs=frozenset(Output),
            embedding_model="org/m3",
            reranker_model="org/rr",
            max_batch_size=100,
        )

    async def start(self) -> None:
        self.loaded = True

    async def stop(self) -> None:
        pass

    def health(self) -> BackendHealth:
        return BackendHealth(loaded=self.loaded, healthy=True, device="cpu")

    def model_info(self, operation: Operation) -> ModelInfo:
        return ModelInfo(name="m", max_tokens=16, vocab_size=100, dimension=DIM)

    async def encode(self, texts: Sequence[str], outputs: frozenset[Output]) -> Encoding:
        self.calls += 1
        if self.fail:
            raise RuntimeError("boom: internal detail")
        dense = np.stack([np.arange(1, DIM + 1, dtype=np.float32) * len(t) for t in texts])
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        lexical = tuple(
            TokenWeights(np.array([len(t), 7], dtype=np.int64), np.array([1.0, 2.0], np.float32))
            for t in texts
        )
        return Encoding(
            token_count=sum(len(t.split()) + 2 for t in texts), dense=dense, lexical=lexical
        )

    async def score(self, query: str, documents: Sequence[str]) -> Scores:
        logits = np.array([float(ord(d[0]) - ord("m")) for d in documents], dtype=np.float32)
        return Scores(logits=logits, token_count=3 * len(documents))

    async def token_ids(self, texts: Sequence[str]) -> tuple[list[int], ...]:
        return tuple([0] * (len(t.split()) + 2) for t in texts)
