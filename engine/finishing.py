"""What turns a backend's raw answer into the engine's: the last step of every operation.

A backend returns dense rows at the model's dimension, lexical weights keyed by token
id and raw cross-encoder logits (``engine/backend.py``). Here, once and the same way for
every backend: dense rows cut to ``dimensions`` (renormalised where served normalised),
lexical weights mapped to sparse vectors, logits turned into probabilities, documents
sorted and cut to ``top_n``. Kept apart from validation and routing so that a dialect
never finishes an answer itself: a score leaves the engine with its logit and its
probability, and no module under ``api/`` computes a sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.sparse_mapping import SparseMapper, SparseMapping
from engine.types import (
    DenseMatrix,
    Encoding,
    HybridEmbeddings,
    M3Scores,
    Output,
    PairScores,
    RankedDocument,
    Ranking,
    Scores,
)

__all__ = ["SparseMappers", "embeddings", "normalized", "pair_scores", "ranking", "sigmoid"]


def sigmoid(logits: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """A cross-encoder's relevance probability, in [0, 1], from its logit."""
    wide = logits.astype(np.float64)
    probabilities: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-wide))
    return probabilities


def normalized(matrix: DenseMatrix) -> DenseMatrix:
    """Each row L2-normalised (a zero row stays zero rather than dividing by zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    rows: DenseMatrix = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return rows


def embeddings(
    encoding: Encoding,
    outputs: frozenset[Output],
    *,
    dimensions: int | None,
    normalize: bool,
    mapper: SparseMapper | None,
) -> HybridEmbeddings:
    """The asked heads of ``encoding``: dense rows cut to ``dimensions``, lexical weights
    mapped by ``mapper`` (needed only where ``encoding`` has them)."""
    dense = encoding.dense
    if dense is not None and dimensions is not None and dimensions < dense.shape[1]:
        # As TEI: cut, then normalise only what is served normalised.
        dense = dense[:, :dimensions]
        dense = normalized(dense) if normalize else np.ascontiguousarray(dense)
    sparse = None
    if encoding.lexical is not None:
        assert mapper is not None, "lexical weights need a sparse mapper"
        sparse = tuple(mapper.map(weights) for weights in encoding.lexical)
    return HybridEmbeddings(
        prompt_tokens=encoding.token_count,
        dense=dense if Output.DENSE in outputs else None,
        sparse=sparse if Output.LEXICAL in outputs else None,
        colbert=encoding.colbert if Output.COLBERT in outputs else None,
    )


def ranking(scores: Scores, top_n: int | None) -> Ranking:
    """Documents best first, each with its logit and probability, cut to ``top_n``; the
    tokens are every document's, those cut by ``top_n`` included."""
    logits = scores.logits.astype(np.float64)
    return _ranked(logits, sigmoid(logits), top_n, scores.token_count)


def m3_ranking(scores: M3Scores, top_n: int | None) -> Ranking:
    """Documents best first by bge-m3's weighted sum of its three scores, cut to
    ``top_n``: a similarity, not a logit, so it is both the raw and the served score."""
    combined = scores.colbert_sparse_dense
    return _ranked(combined, combined, top_n, scores.prompt_tokens)


def _ranked(
    raw: NDArray[np.float64], served: NDArray[np.float64], top_n: int | None, tokens: int
) -> Ranking:
    # Stable sort on the negated score: ties keep input order.
    order = np.argsort(-raw, kind="stable")[: top_n or len(raw)]
    results = tuple(
        RankedDocument(index=int(i), logit=float(raw[i]), score=float(served[i])) for i in order
    )
    return Ranking(results=results, prompt_tokens=tokens)


def pair_scores(
    size: int, groups: Iterable[Sequence[int]], answers: Sequence[Scores]
) -> PairScores:
    """``size`` pairs' logits in input order, with their probabilities beside them, from
    the backend's answer for each group of pairs (``groups``: their positions)."""
    logits = np.empty(size, dtype=np.float32)
    for positions, answer in zip(groups, answers, strict=True):
        logits[list(positions)] = answer.logits
    return PairScores(
        logits=logits.astype(np.float64),
        probabilities=sigmoid(logits),
        token_count=sum(answer.token_count for answer in answers),
    )


class SparseMappers:
    """One SparseMapper per mapping, made on first use and kept: the hash mapper caches
    every token id it has hashed."""

    def __init__(self, default: SparseMapping, index_space: int) -> None:
        self._default = default
        self._index_space = index_space  # SPARSE_INDEX_SPACE, the hash mapping's
        self._mappers: dict[SparseMapping, SparseMapper] = {}

    def get(self, mapping: SparseMapping | None, vocab_size: Callable[[], int]) -> SparseMapper:
        """``mapping``'s mapper (None: SPARSE_TOKEN_MAPPING's); ``vocab_size``, the sparse
        model's, is asked only to make the tokenizer mapping's."""
        mapping = mapping or self._default
        mapper = self._mappers.get(mapping)
        if mapper is None:
            space = vocab_size() if mapping == "tokenizer" else self._index_space
            mapper = self._mappers[mapping] = SparseMapper(mapping, space)
        return mapper
