"""Values that cross the engine's boundary: numpy arrays and small frozen structs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_OPTIONS",
    "ColbertMatrix",
    "DenseMatrix",
    "EncodeOptions",
    "Encoding",
    "HybridEmbeddings",
    "M3Scores",
    "M3Weights",
    "ModelInfo",
    "Operation",
    "Output",
    "PairScores",
    "RankedDocument",
    "Ranking",
    "Scores",
    "SparseVector",
    "Token",
    "TokenWeights",
]

DenseMatrix = NDArray[np.float32]
"""(texts, dimension), each row L2-normalised (unless EncodeOptions.normalize is off)."""
ColbertMatrix = NDArray[np.float32]
"""(tokens after CLS, dimension), each row L2-normalised."""


class Operation(StrEnum):
    """What a backend can be asked for; each has its own backend chain."""

    EMBED = "embed"  # dense vectors
    # bge-m3's lexical-weight and ColBERT heads (alone, or beside dense in a hybrid pass)
    LEXICAL_COLBERT = "lexical_colbert"
    RERANK = "rerank"

    @property
    def described(self) -> str:
        """The operation in an error message's words."""
        if self is Operation.LEXICAL_COLBERT:
            return "sparse, ColBERT or hybrid embeddings"
        return self.value


class Output(StrEnum):
    """The heads one bge-m3 forward pass can return."""

    DENSE = "dense"
    # Raw weights per token id; a "sparse vector" is what they become after index mapping
    # (engine.sparse_mapping), in the answer.
    LEXICAL = "lexical"
    COLBERT = "colbert"


@dataclass(frozen=True, slots=True)
class EncodeOptions:
    """How one encode() call departs from bge-m3's defaults (TEI's ``normalize`` and
    ``truncation_direction``). A backend whose Capabilities do not declare an option is
    never asked for it."""

    normalize: bool = True  # False: dense rows as pooled, before any L2 normalisation
    truncate_left: bool = False  # a text over the token limit keeps its end, not its start
    # ColBERT rows kept per text: the k of largest norm before L2 normalisation, in their
    # order (a cheaper store for a small loss); None keeps every row.
    colbert_max_tokens: int | None = None


DEFAULT_OPTIONS = EncodeOptions()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    max_tokens: int
    vocab_size: int
    dimension: int | None = None  # None for a cross-encoder
    pooling: str | None = None  # TEI's name of the dense pooling (cls, mean, last_token)
    # What the model's answers depend on (backends/fingerprint.py), computed once at
    # start-up: the embedding cache's entries are keyed by it. "": not known.
    fingerprint: str = ""
    # What its forward passes compute in (float32, float16, bfloat16); "": not known (a remote).
    dtype: str = ""


@dataclass(frozen=True, slots=True)
class Token:
    """One token as TEI's ``/tokenize`` shows it: ``start``/``stop`` are UTF-8 byte offsets
    into the text (None for a special token, whose ``text`` is its own symbol)."""

    id: int
    text: str
    special: bool
    start: int | None = None
    stop: int | None = None


@dataclass(frozen=True, slots=True)
class TokenWeights:
    """bge-m3 lexical weights of one text: unique token ids, max weight of each, > 0."""

    token_ids: NDArray[np.int64]
    weights: NDArray[np.float32]

    @classmethod
    def of_tokens(
        cls, ids: NDArray[np.int64], weights: NDArray[np.float32], special_ids: NDArray[np.int64]
    ) -> TokenWeights:
        """One text's lexical weights from its per-token weights (``relu(sparse_linear(h))``),
        as FlagEmbedding's ``_process_token_weights`` makes them: special tokens left out,
        weights > 0 only (the relu's zeros), the largest weight of each token id. One
        rule for every backend that has per-token weights (flag, a vLLM remote)."""
        keep = (weights > 0) & ~np.isin(ids, special_ids)
        unique, inverse = np.unique(ids[keep], return_inverse=True)
        best = np.zeros(unique.shape[0], dtype=np.float32)
        np.maximum.at(best, inverse, weights[keep].astype(np.float32))
        return cls(token_ids=unique.astype(np.int64), weights=best)


@dataclass(frozen=True, slots=True)
class Encoding:
    """A backend's answer for a batch of texts, in input order; unasked heads are None."""

    token_count: int  # all texts, special tokens included, after truncation
    dense: DenseMatrix | None = None
    lexical: tuple[TokenWeights, ...] | None = None
    colbert: tuple[ColbertMatrix, ...] | None = None
    # Each text's share of token_count, where the backend knows it (the cache needs it).
    text_tokens: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Scores:
    """A backend's raw cross-encoder logits, one per document, in input order."""

    logits: NDArray[np.float32]
    token_count: int


@dataclass(frozen=True, slots=True)
class PairScores:
    """The engine's scores of (query, passage) pairs, in input order: each pair's logit
    and its probability (the logit's sigmoid, in [0, 1]), so a dialect picks one and
    computes neither."""

    logits: NDArray[np.float64]
    probabilities: NDArray[np.float64]
    token_count: int


@dataclass(frozen=True, slots=True)
class SparseVector:
    """Qdrant-ready sparse vector: unique ascending indices, float32 values > 0."""

    indices: NDArray[np.int64]
    values: NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class HybridEmbeddings:
    """What the engine returns for any embedding call; unasked outputs are None."""

    prompt_tokens: int
    dense: DenseMatrix | None = None
    sparse: tuple[SparseVector, ...] | None = None
    colbert: tuple[ColbertMatrix, ...] | None = None


@dataclass(frozen=True, slots=True)
class M3Weights:
    """bge-m3's weights of its three scores, in FlagEmbedding's order (dense, sparse,
    ColBERT): each >= 0, not all zero."""

    dense: float
    sparse: float
    colbert: float


@dataclass(frozen=True, slots=True)
class M3Scores:
    """bge-m3's own scores of documents against one query, in input order, as
    FlagEmbedding's ``BGEM3FlagModel.compute_score`` returns them: each head's score
    and the two weighted means (``sparse_dense`` is NaN where the dense and sparse
    weights are both zero, as FlagEmbedding's 0 / 0)."""

    dense: NDArray[np.float64]
    sparse: NDArray[np.float64]
    colbert: NDArray[np.float64]
    sparse_dense: NDArray[np.float64]
    colbert_sparse_dense: NDArray[np.float64]
    weights: M3Weights
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class RankedDocument:
    index: int
    logit: float
    score: float  # the logit's probability: sigmoid(logit), in [0, 1]


@dataclass(frozen=True, slots=True)
class Ranking:
    """Documents by descending score, cut to top_n."""

    results: tuple[RankedDocument, ...]
    prompt_tokens: int
