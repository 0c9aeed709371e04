"""How far a lower-precision run's answers are from float32's: the measures DTYPE is bounded by.

Used by tests/integration/test_dtype_bounds.py (the bounds) and bench/dtype_accuracy.py (the
figures docs/benchmarks.md states).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from backends.flag import FlagBackend
from engine import Operation, Output, Settings
from engine.types import Encoding, Scores, TokenWeights
from tests.texts import DOCUMENTS, QUERY

__all__ = ["Drift", "drift", "flag_answers", "neighbours_kept"]

# Two documents whose float32 logits are this far apart must keep their order.
ORDER_MARGIN = 0.25
# The sparse top-k compared: the k heaviest tokens of each text.
TOP_K = 5


def flag_answers(
    settings: Settings, loop: asyncio.AbstractEventLoop, texts: list[str], rerank: bool
) -> tuple[Encoding, Scores | None]:
    """Every head of ``texts`` (dense only without ``rerank``) and the test set's rerank
    scores, from a flag backend started and stopped here."""
    operations = frozenset(Operation) if rerank else frozenset({Operation.EMBED})
    backend = FlagBackend(settings, operations)
    loop.run_until_complete(backend.start())
    try:
        outputs = frozenset(Output) if rerank else frozenset({Output.DENSE})
        encoding = loop.run_until_complete(backend.encode(texts, outputs))
        scores = loop.run_until_complete(backend.score(QUERY, DOCUMENTS)) if rerank else None
        return encoding, scores
    finally:
        loop.run_until_complete(backend.stop())


@dataclass(frozen=True)
class Drift:
    dense_cosine_min: float
    colbert_cosine_min: float
    sparse_max_error: float  # the largest weight error, as a fraction of the set's top weight
    sparse_top_k_kept: float  # texts whose top-k set is float32's, of those compared
    sparse_top_k_compared: int  # texts whose k-th weight is clear of the (k+1)-th
    rerank_max_error: float  # in logits
    rerank_order_kept: bool  # every pair ORDER_MARGIN apart in float32 keeps its order


def drift(reference: Encoding, other: Encoding, ref_scores: Scores, scores: Scores) -> Drift:
    assert reference.dense is not None and other.dense is not None
    assert reference.colbert is not None and other.colbert is not None
    assert reference.lexical is not None and other.lexical is not None
    errors: list[float] = []
    kept: list[bool] = []
    # One scale for the set: a text whose float32 weights are all near zero (random
    # weights make some) would otherwise turn a rounding into a 100 % error.
    scale = max(
        (float(row.weights.max()) for row in reference.lexical if len(row.weights)), default=1.0
    )
    for ours, theirs in zip(other.lexical, reference.lexical, strict=True):
        errors.append(_sparse_error(ours, theirs, scale))
        clear = _clear_top_k(theirs, errors[-1] * scale)
        if clear is not None:
            kept.append(clear == set(_top_k(ours)))
    return Drift(
        dense_cosine_min=float(np.min(np.sum(other.dense * reference.dense, axis=1))),
        colbert_cosine_min=min(
            float(np.min(np.sum(a * b, axis=1)))
            for a, b in zip(other.colbert, reference.colbert, strict=True)
        ),
        sparse_max_error=max(errors),
        sparse_top_k_kept=sum(kept) / max(len(kept), 1),
        sparse_top_k_compared=len(kept),
        rerank_max_error=float(np.max(np.abs(scores.logits - ref_scores.logits))),
        rerank_order_kept=_order_kept(ref_scores.logits, scores.logits),
    )


def neighbours_kept(reference: NDArray[np.float32], other: NDArray[np.float32]) -> float:
    """The fraction of texts whose nearest other text (by cosine) is float32's."""

    def nearest(vectors: NDArray[np.float32]) -> NDArray[np.int64]:
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argmax(similarity, axis=1)

    return float(np.mean(nearest(reference) == nearest(other)))


def _weights(row: TokenWeights) -> dict[int, float]:
    return dict(zip(row.token_ids.tolist(), row.weights.tolist(), strict=True))


def _sparse_error(ours: TokenWeights, theirs: TokenWeights, scale: float) -> float:
    mine, reference = _weights(ours), _weights(theirs)
    return max(
        (abs(mine.get(t, 0.0) - reference.get(t, 0.0)) / scale for t in mine.keys() | reference),
        default=0.0,
    )


def _top_k(row: TokenWeights) -> list[int]:
    order = np.argsort(-row.weights, kind="stable")[:TOP_K]
    return [int(row.token_ids[i]) for i in order]


def _clear_top_k(row: TokenWeights, error: float) -> set[int] | None:
    """float32's top-k where its k-th weight clears the (k+1)-th by more than twice the
    text's measured error (else a rounding may swap them, and no set is the right one)."""
    weights = np.sort(row.weights)[::-1]
    if len(weights) <= TOP_K:
        return set(row.token_ids.tolist())
    if weights[TOP_K - 1] - weights[TOP_K] <= 2 * error:
        return None
    return set(_top_k(row))


def _order_kept(reference: NDArray[np.float32], other: NDArray[np.float32]) -> bool:
    for i in range(len(reference)):
        for j in range(len(reference)):
            if reference[i] - reference[j] > ORDER_MARGIN and not other[i] > other[j]:
                return False
    return True
