"""The checks of what a remote answered, for every remote kind.

An answer of any other shape than asked for (malformed, short, shifted, of
differing widths, missing its token count) fails the call as a backend failure
naming the remote and the route (``Answer`` says both), never a partial or
shifted result.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import msgspec
import numpy as np
from numpy.typing import NDArray

from backends.remote.contract import ProbeFailed
from backends.remote.transport import Answer
from engine.errors import BackendFailure
from engine.types import DenseMatrix, Scores

__all__ = [
    "Listed",
    "Usage",
    "base64_row",
    "cohere_scores",
    "compute_tokens",
    "decoded",
    "dense_matrix",
    "expect_ok",
    "expect_rows",
    "failure",
    "header_tokens",
    "in_order",
]

T = TypeVar("T")


class Usage(msgspec.Struct):
    prompt_tokens: int


class _Indexed(Protocol):
    @property
    def index(self) -> int: ...


Row = TypeVar("Row", bound=_Indexed)


class Listed(msgspec.Struct, Generic[Row]):
    """An OpenAI-shaped answer: rows, each with its input's index, and the usage."""

    data: list[Row]
    usage: Usage


class _Ranked(msgspec.Struct):
    index: int
    relevance_score: float


class _Reranked(msgspec.Struct):
    """Cohere's rerank answer, which Infinity and this service both give."""

    results: list[_Ranked]
    usage: Usage


def failure(answer: Answer, what: str) -> BackendFailure:
    return BackendFailure(f"the remote {answer.url} answered {answer.path} {what}")


def expect_ok(answer: Answer) -> None:
    """A probe's answer must be 200; anything else means: not up (yet), try again later."""
    if answer.status != 200:
        hint = ": check REMOTE_API_KEY" if answer.status in (401, 403) else ""
        raise ProbeFailed(f"GET {answer.path} answered HTTP {answer.status}{hint}")


def decoded(answer: Answer, kind: type[T]) -> T:
    """``answer``'s JSON body as ``kind``."""
    try:
        return msgspec.json.decode(answer.content, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise failure(answer, f"with a malformed body ({exc})") from exc


def expect_rows(answer: Answer, got: int, sent: int) -> None:
    if got != sent:
        raise failure(answer, f"with {got} results for {sent} inputs")


def in_order(answer: Answer, rows: list[Row], sent: int) -> list[Row]:
    """Rows answered with their input's index, each index exactly once, put in input order."""
    indices = [row.index for row in rows]
    expect_rows(answer, len(indices), sent)
    if sorted(indices) != list(range(sent)):
        raise failure(answer, f"with indices that are not 0..{sent - 1}")
    return sorted(rows, key=lambda row: row.index)


def dense_matrix(
    answer: Answer,
    rows: Sequence[Sequence[float] | NDArray[np.float32]],
    sent: int,
    *,
    normalize: bool = True,
) -> DenseMatrix:
    """One row per input, all of one non-zero width; L2-normalised unless ``normalize`` is
    off (rows asked for as pooled)."""
    expect_rows(answer, len(rows), sent)
    width = len(rows[0]) if rows else 0
    if width == 0 or any(len(row) != width for row in rows):
        raise failure(answer, "with vectors of differing or zero width")
    dense = np.asarray(rows, dtype=np.float32)
    if not normalize:
        return dense
    norms = np.sqrt(np.einsum("ij,ij->i", dense, dense))
    # A remote may serve a model without a Normalize step, and the engine promises unit
    # rows; rows already normalised stay bit for bit what the remote sent.
    if float(np.max(np.abs(norms - 1.0))) > 1e-4:
        dense /= np.maximum(norms, 1e-12)[:, None]
    return dense


def base64_row(answer: Answer, text: str) -> NDArray[np.float32]:
    """A vector sent as base64 little-endian float32 (OpenAI's format): exact, and cheaper
    than decimals to write and to read."""
    try:
        return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4")
    except ValueError as exc:
        raise failure(answer, "with malformed base64") from exc


def cohere_scores(answer: Answer, size: int) -> Scores:
    reranked = decoded(answer, _Reranked)
    ordered = in_order(answer, reranked.results, size)
    logits = np.array([rank.relevance_score for rank in ordered], dtype=np.float32)
    return Scores(logits=logits, token_count=reranked.usage.prompt_tokens)


def header_tokens(answer: Answer) -> int | None:
    """The tokens counted, from ``x-compute-tokens`` (TEI's, and a bge-serve's TEI
    routes'); None where a proxy stripped it."""
    header = answer.headers.get("x-compute-tokens", "")
    return int(header) if header.isdigit() else None


def compute_tokens(answer: Answer) -> int:
    tokens = header_tokens(answer)
    if tokens is None:
        raise failure(answer, "without x-compute-tokens")
    return tokens
