"""What the client returns: frozen msgspec Structs, one shape per method whatever the
options (a wire format changes the bytes sent, never the type returned)."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "DenseEmbeddings",
    "Health",
    "HybridEmbeddings",
    "HybridVector",
    "Info",
    "M3Score",
    "M3Scores",
    "QuantizedEmbeddings",
    "QuantizedFormat",
    "QuantizedHybridEmbeddings",
    "QuantizedHybridVector",
    "Ranked",
    "Ranking",
    "SparseEmbeddings",
    "SparseMapping",
    "SparseSpace",
    "SparseVector",
    "Token",
    "Usage",
    "WireFormat",
]

SparseMapping = Literal["tokenizer", "hash"]
# How dense vectors (and ColBERT rows) travel; all three decode to floats. base64 is the
# float32 bytes exactly, a quarter of the JSON numbers' size; float16 halves it again,
# rounding each value to half precision.
WireFormat = Literal["float", "base64", "float16"]
# The server's integer formats (docs/api.md, "Quantized vectors"): not floats, so their
# own method and result type.
QuantizedFormat = Literal["int8", "uint8", "binary", "ubinary"]


class SparseSpace(msgspec.Struct, frozen=True):
    """Which index space sparse vectors are in: ``tokenizer`` (index = token id, the
    space the vocabulary's size) or ``hash`` (sha256 of the id modulo ``index_space``).
    The server's ``SPARSE_TOKEN_MAPPING`` and its ``/health`` say which it answers in."""

    mapping: SparseMapping
    index_space: int

    def __str__(self) -> str:
        return f"{self.mapping} (index space {self.index_space})"

    def metadata(self) -> dict[str, str | int]:
        """The keys ``bge-index`` records in a Qdrant collection's metadata."""
        return {"sparse_mapping": self.mapping, "sparse_index_space": self.index_space}

    @classmethod
    def from_metadata(cls, metadata: dict[str, object] | None) -> SparseSpace | None:
        """The space ``bge-index`` recorded (None for a collection that records none)."""
        mapping = (metadata or {}).get("sparse_mapping")
        index_space = (metadata or {}).get("sparse_index_space")
        if mapping not in ("tokenizer", "hash") or not isinstance(index_space, int):
            return None
        return cls(mapping, index_space)


class Usage(msgspec.Struct, frozen=True):
    """Tokens the server counted, summed over every batch of the call."""

    prompt_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.total_tokens + other.total_tokens
        )


class SparseVector(msgspec.Struct, frozen=True):
    """bge-m3 lexical weights in the client's space: indices unique and ascending, values
    > 0, ready for Qdrant's ``SparseVector(indices=..., values=...)``."""

    indices: list[int]
    values: list[float]


class DenseEmbeddings(msgspec.Struct, frozen=True):
    """One float vector per text, in the texts' order."""

    model: str
    vectors: list[list[float]]
    usage: Usage


class QuantizedEmbeddings(msgspec.Struct, frozen=True):
    """Integer vectors; ``scales`` (int8 and uint8 only) gives each vector's floats back:
    ``x ≈ q * scale`` (uint8: ``(q - 128) * scale``)."""

    model: str
    format: QuantizedFormat
    vectors: list[list[int]]
    scales: list[float] | None
    usage: Usage


class SparseEmbeddings(msgspec.Struct, frozen=True):
    """One sparse vector per text, in the texts' order, all in ``space``."""

    model: str
    vectors: list[SparseVector]
    space: SparseSpace
    usage: Usage


class HybridVector(msgspec.Struct, frozen=True):
    """One text's vectors from one forward pass; ``colbert`` (one row per token after CLS)
    only when asked for."""

    dense: list[float]
    sparse: SparseVector
    colbert: list[list[float]] | None = None


class HybridEmbeddings(msgspec.Struct, frozen=True):
    """One ``HybridVector`` per text, in the texts' order; sparse ones in ``space``."""

    model: str
    vectors: list[HybridVector]
    space: SparseSpace
    usage: Usage


class QuantizedHybridVector(msgspec.Struct, frozen=True):
    """One text's vectors from one forward pass, dense and ColBERT rows as the server's
    integers; ``dense_scale`` and ``colbert_scales`` (one per row; int8 and uint8 only)
    give their floats back as ``QuantizedEmbeddings.scales`` do. ``colbert`` only when
    asked for."""

    dense: list[int]
    sparse: SparseVector
    dense_scale: float | None = None
    colbert: list[list[int]] | None = None
    colbert_scales: list[float] | None = None


class QuantizedHybridEmbeddings(msgspec.Struct, frozen=True):
    """One ``QuantizedHybridVector`` per text, in the texts' order; sparse ones in
    ``space``."""

    model: str
    format: QuantizedFormat
    vectors: list[QuantizedHybridVector]
    space: SparseSpace
    usage: Usage


class Ranked(msgspec.Struct, frozen=True):
    """A document's place in a ranking: its position in the input, its score (the sigmoid
    of the cross-encoder's logit, or the logit with ``raw_scores``) and its text."""

    index: int
    score: float
    document: str


class Ranking(msgspec.Struct, frozen=True):
    """Best first, cut to ``top_n``."""

    model: str
    results: list[Ranked]
    usage: Usage


class M3Score(msgspec.Struct, frozen=True):
    """bge-m3's three scores of one document and FlagEmbedding's two weighted means
    (``sparse_dense`` is None where both its weights are 0)."""

    index: int
    dense: float
    sparse: float
    colbert: float
    sparse_dense: float | None
    colbert_sparse_dense: float


class M3Scores(msgspec.Struct, frozen=True):
    """In the documents' order, as FlagEmbedding's ``compute_score`` returns them."""

    model: str
    results: list[M3Score]
    weights: tuple[float, float, float]
    usage: Usage


class Token(msgspec.Struct, frozen=True):
    """A token with its text and byte offsets in the input (None for special tokens)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /health``: ``status`` is ``ok``, ``loading`` or ``degraded``."""

    status: Literal["ok", "loading", "degraded"]
    embedding_model: str
    reranker_model: str
    routes: dict[str, str | None]
    max_batch_size: int
    sparse_mapping: SparseMapping | None = None
    sparse_index_space: int | None = None
    error: str | None = None
    warnings: list[str] = []

    @property
    def sparse_space(self) -> SparseSpace | None:
        """The space the server answers sparse vectors in by default (None before its
        tokenizer has loaded, or where it serves no sparse vectors)."""
        if self.sparse_mapping is None or self.sparse_index_space is None:
            return None
        return SparseSpace(self.sparse_mapping, self.sparse_index_space)


class Info(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /info`` (TEI's fields, and the sparse space after them)."""

    model_id: str
    max_input_length: int
    max_client_batch_size: int
    auto_truncate: bool
    version: str
    sparse_mapping: SparseMapping | None = None
    sparse_index_space: int | None = None
