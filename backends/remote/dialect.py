"""What every remote kind (TEI, Infinity, this service) implements, and what a probe finds.

A dialect knows one remote's wire format: how to find out what it serves, and
how to ask it for one chunk of work (no larger than the remote's batch limit).
Splitting, concurrency, merging and the remote's up/down state belong to the
endpoint; retries and error statuses to the transport.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import msgspec
import numpy as np
from numpy.typing import NDArray

from backends.remote.transport import Answer, Deadline, RemoteClient
from engine.errors import BackendFailure
from engine.types import (
    DEFAULT_OPTIONS,
    DenseMatrix,
    EncodeOptions,
    Encoding,
    ModelInfo,
    Operation,
    Output,
    Scores,
    Token,
)

__all__ = [
    "KIND_NAMES",
    "Dialect",
    "Kind",
    "Offer",
    "ProbeFailed",
    "RemoteChanged",
    "TeiTokenRoutes",
    "Usage",
    "base64_row",
    "cohere_scores",
    "decode",
    "dense_matrix",
    "expect_ok",
    "expect_rows",
    "logits_by_index",
    "permutation",
    "tei_decode",
    "tei_tokens",
    "together",
]

Kind = Literal["tei", "infinity", "self", "runpod"]
KIND_NAMES: dict[Kind, str] = {
    "tei": "TEI",
    "infinity": "Infinity",
    "self": "bge-serve",
    "runpod": "bge-runpod-worker on RunPod",
}

T = TypeVar("T")


class Usage(msgspec.Struct):
    prompt_tokens: int


class _Ranked(msgspec.Struct):
    index: int
    relevance_score: float


class _Reranked(msgspec.Struct):
    """Cohere's rerank answer, which Infinity and this service both give."""

    results: list[_Ranked]
    usage: Usage


class ProbeFailed(Exception):
    """The remote could not be probed now (down, loading, answering errors); try later."""


class RemoteChanged(BackendFailure):
    """The remote no longer is what its probe found (e.g. it now refuses batches its
    /info allowed): the call fails, and the endpoint probes the remote again."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What one remote serves, as found by probing it."""

    kind: Kind
    operations: frozenset[Operation]
    outputs: frozenset[Output]  # heads one encode() can return
    models: Mapping[Operation, ModelInfo]
    max_batch_size: int  # most texts (or documents) the remote takes in one request
    version: str = ""
    # Why an operation is not offered, for the start-up error that names it.
    missing: Mapping[Operation, str] = field(default_factory=dict)

    def describe(self) -> str:
        served = ", ".join(
            f"{op} ({self.models[op].name})" for op in sorted(self.operations) if op in self.models
        )
        version = f" {self.version}" if self.version else ""
        return f"{KIND_NAMES[self.kind]}{version} serving {served or 'nothing usable'}"


class Dialect(Protocol):
    kind: Kind
    # Whether "too large" (413) for several items means the batch, never one item, was
    # too much (so halves may pass): true of this service, whose inputs are truncated.
    halves_too_large: bool

    async def probe(self, client: RemoteClient, deadline: Deadline) -> Offer:
        """What the remote serves; ProbeFailed when it cannot tell now, StartupError when
        it answers but does not fit the settings (e.g. several models and none chosen)."""

    async def encode(
        self,
        client: RemoteClient,
        texts: Sequence[str],
        outputs: frozenset[Output],
        offer: Offer,
        deadline: Deadline,
        options: EncodeOptions = DEFAULT_OPTIONS,
    ) -> Encoding:
        """``options`` off their defaults: honoured, or refused with InvalidInput saying
        why this kind of remote cannot."""

    async def score(
        self,
        client: RemoteClient,
        query: str,
        documents: Sequence[str],
        offer: Offer,
        deadline: Deadline,
    ) -> Scores: ...

    async def tokenize(
        self, client: RemoteClient, texts: Sequence[str], offer: Offer, deadline: Deadline
    ) -> tuple[list[int], ...]: ...

    async def tokens(
        self,
        client: RemoteClient,
        texts: Sequence[str],
        add_special_tokens: bool,
        offer: Offer,
        deadline: Deadline,
    ) -> tuple[tuple[Token, ...], ...]: ...

    async def decode(
        self,
        client: RemoteClient,
        ids: Sequence[Sequence[int]],
        skip_special_tokens: bool,
        offer: Offer,
        deadline: Deadline,
    ) -> tuple[str, ...]: ...


def decode(answer: Answer, kind: type[T], client: RemoteClient, path: str) -> T:
    """``answer``'s JSON body as ``kind``; a body of any other shape is a backend failure."""
    try:
        return msgspec.json.decode(answer.content, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BackendFailure(
            f"the remote {client.url} answered {path} with a malformed body ({exc})"
        ) from exc


def expect_rows(got: int, sent: int, client: RemoteClient, path: str) -> None:
    """A remote that answers fewer or more rows than it was sent failed: never a shifted result."""
    if got != sent:
        raise BackendFailure(
            f"the remote {client.url} answered {path} with {got} results for {sent} inputs"
        )


def permutation(indices: Sequence[int], size: int, client: RemoteClient, path: str) -> None:
    """Rerank answers come sorted by score; each input index must appear exactly once."""
    expect_rows(len(indices), size, client, path)
    if sorted(indices) != list(range(size)):
        raise BackendFailure(
            f"the remote {client.url} answered {path} with indices that are not 0..{size - 1}"
        )


def dense_matrix(
    rows: Sequence[Sequence[float] | NDArray[np.float32]],
    sent: int,
    client: RemoteClient,
    path: str,
    *,
    normalize: bool = True,
) -> DenseMatrix:
    """One row per input, all of one non-zero width, or a backend failure; L2-normalised
    unless ``normalize`` is off (rows asked for as pooled)."""
    expect_rows(len(rows), sent, client, path)
    width = len(rows[0]) if rows else 0
    if width == 0 or any(len(row) != width for row in rows):
        raise BackendFailure(
            f"the remote {client.url} answered {path} with vectors of differing or zero width"
        )
    dense = np.asarray(rows, dtype=np.float32)
    if not normalize:
        return dense
    norms = np.sqrt(np.einsum("ij,ij->i", dense, dense))
    # A remote may serve a model without a Normalize step, and the engine promises unit
    # rows; rows already normalised stay bit for bit what the remote sent.
    if float(np.max(np.abs(norms - 1.0))) > 1e-4:
        dense /= np.maximum(norms, 1e-12)[:, None]
    return dense


def expect_ok(answer: Answer, path: str) -> None:
    """A probe's answer must be 200; anything else means: not up (yet), try again later."""
    if answer.status != 200:
        hint = ": check REMOTE_API_KEY" if answer.status in (401, 403) else ""
        raise ProbeFailed(f"GET {path} answered HTTP {answer.status}{hint}")


def base64_row(text: str, client: RemoteClient, path: str) -> NDArray[np.float32]:
    """A vector sent as base64 little-endian float32 (OpenAI's format): exact, and cheaper
    than decimals to write and to read."""
    try:
        return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4")
    except ValueError as exc:
        raise BackendFailure(
            f"the remote {client.url} answered {path} with malformed base64"
        ) from exc


def logits_by_index(
    ranked: Sequence[tuple[int, float]], size: int, client: RemoteClient, path: str
) -> NDArray[np.float32]:
    """Rerank answers come sorted by score: put each (index, logit) back at its document."""
    permutation([index for index, _ in ranked], size, client, path)
    logits = np.empty(size, dtype=np.float32)
    for index, logit in ranked:
        logits[index] = logit
    return logits


def cohere_scores(answer: Answer, size: int, client: RemoteClient, path: str) -> Scores:
    reranked = decode(answer, _Reranked, client, path)
    ranked = [(r.index, r.relevance_score) for r in reranked.results]
    return Scores(
        logits=logits_by_index(ranked, size, client, path),
        token_count=reranked.usage.prompt_tokens,
    )


class _Token(msgspec.Struct):
    """TEI's SimpleToken."""

    id: int
    text: str
    special: bool
    start: int | None = None
    stop: int | None = None


async def tei_tokens(
    client: RemoteClient, texts: Sequence[str], add_special_tokens: bool, deadline: Deadline
) -> tuple[tuple[Token, ...], ...]:
    """``POST /tokenize`` of TEI, or of a bge-serve (which speaks TEI's routes too)."""
    body = {"inputs": list(texts), "add_special_tokens": add_special_tokens}
    rows = decode(
        await client.post("/tokenize", body, deadline), list[list[_Token]], client, "/tokenize"
    )
    expect_rows(len(rows), len(texts), client, "/tokenize")
    return tuple(
        tuple(Token(t.id, t.text, t.special, t.start, t.stop) for t in row) for row in rows
    )


async def tei_decode(
    client: RemoteClient,
    ids: Sequence[Sequence[int]],
    skip_special_tokens: bool,
    deadline: Deadline,
) -> tuple[str, ...]:
    """``POST /decode`` of TEI or of a bge-serve."""
    body = {"ids": [list(row) for row in ids], "skip_special_tokens": skip_special_tokens}
    texts = decode(await client.post("/decode", body, deadline), list[str], client, "/decode")
    expect_rows(len(texts), len(ids), client, "/decode")
    return tuple(texts)


class TeiTokenRoutes:
    """``tokens`` and ``decode`` through ``/tokenize`` and ``/decode``: TEI's routes, which
    a bge-serve peer speaks too."""

    async def tokens(
        self,
        client: RemoteClient,
        texts: Sequence[str],
        add_special_tokens: bool,
        offer: Offer,
        deadline: Deadline,
    ) -> tuple[tuple[Token, ...], ...]:
        return await tei_tokens(client, texts, add_special_tokens, deadline)

    async def decode(
        self,
        client: RemoteClient,
        ids: Sequence[Sequence[int]],
        skip_special_tokens: bool,
        offer: Offer,
        deadline: Deadline,
    ) -> tuple[str, ...]:
        return await tei_decode(client, ids, skip_special_tokens, deadline)


async def together(calls: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """``calls`` at once, answers in order; the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
