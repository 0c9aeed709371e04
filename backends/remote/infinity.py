"""Infinity (michaelf34/infinity, e.g. the ROCm image on a 7900 XTX): several models per server.

``GET /models`` lists each model with its capabilities (``embed``, ``rerank``);
``POST /embeddings`` is OpenAI-shaped, ``POST /rerank`` Cohere-shaped. Infinity
has no sparse or ColBERT output, no tokenizer route, and no request field for
unnormalised vectors or Left truncation (its offer says why, and the endpoint
refuses them before anything is sent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import msgspec

from backends.remote.answers import (
    Listed,
    base64_row,
    cohere_scores,
    decoded,
    dense_matrix,
    expect_ok,
    in_order,
)
from backends.remote.contract import Offer, Remote
from backends.remote.transport import Deadline, RemoteClient
from engine.errors import InvalidInput, StartupError
from engine.settings import Settings
from engine.types import (
    DenseMatrix,
    EncodeOptions,
    Encoding,
    ModelInfo,
    Operation,
    Output,
    Scores,
)

__all__ = ["InfinityRemote"]

_PROBE_TEXT = "dimension probe"
# The contract's maxItems for `input` and `documents`.
_MAX_ITEMS = 2048
_CAPABILITY = {Operation.EMBED: "embed", Operation.RERANK: "rerank"}
_SETTING = {Operation.EMBED: "REMOTE_MODEL", Operation.RERANK: "REMOTE_RERANK_MODEL"}


class _Model(msgspec.Struct):
    id: str
    capabilities: list[str] = []


class _Models(msgspec.Struct):
    data: list[_Model]


class _Embedding(msgspec.Struct):
    embedding: list[float] | str  # str: base64
    index: int


_Embeddings = Listed[_Embedding]


class InfinityRemote(Remote):
    kind = "infinity"
    name = "Infinity"

    def __init__(self, client: RemoteClient) -> None:
        super().__init__(client)
        self._names: dict[Operation, str] = {}
        # base64 float32: exact, and cheaper than decimals for Infinity to write and us to read.
        self._encoding = "base64"

    @classmethod
    async def probe(cls, client: RemoteClient, settings: Settings, deadline: Deadline) -> Self:
        answer = await client.get("/models", deadline)
        expect_ok(answer)
        listed = decoded(answer, _Models).data
        remote = cls(client)
        models: dict[Operation, ModelInfo] = {}
        missing: dict[Operation, str] = {
            Operation.LEXICAL_COLBERT: "Infinity has no bge-m3 sparse or ColBERT output; serve "
            "them from the flag backend"
        }
        configured = {
            Operation.EMBED: settings.remote_model,
            Operation.RERANK: settings.remote_rerank_model,
        }
        names = ", ".join(m.id for m in listed) or "none"
        for operation, capability in _CAPABILITY.items():
            able = [m.id for m in listed if capability in m.capabilities]
            chosen = _choose(operation, configured[operation], able, names, client.url)
            if chosen is None:
                missing[operation] = f"it lists no model that can {capability} (models: {names})"
                continue
            remote._names[operation] = chosen
            dimension = None
            if operation is Operation.EMBED:
                dense, _ = await remote._embed([_PROBE_TEXT], deadline)
                dimension = int(dense.shape[1])
            # Infinity reports neither its token limit nor its vocabulary: 0, unknown.
            models[operation] = ModelInfo(chosen, 0, 0, dimension=dimension)
        offer = Offer.of(
            models,
            outputs=frozenset({Output.DENSE}) if Operation.EMBED in models else frozenset(),
            max_batch_size=_MAX_ITEMS,
            options=frozenset(),
            refusals={
                "normalize": f"`normalize`: false is not available: the Infinity at "
                f"{client.url} L2-normalises every vector, and its /embeddings has no option "
                "to skip it",
                "truncate_left": f"`truncation_direction`: Left is not available: the Infinity "
                f"at {client.url} always cuts the end of a long text",
            },
            missing=missing,
        )
        return remote._serving(offer)

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
        deadline: Deadline,
    ) -> Encoding:
        dense, tokens = await self._embed(texts, deadline)
        return Encoding(token_count=tokens, dense=dense)

    async def score(self, query: str, documents: Sequence[str], deadline: Deadline) -> Scores:
        body = {
            "model": self._names[Operation.RERANK],
            "query": query,
            "documents": list(documents),
            "raw_scores": True,
        }
        return cohere_scores(await self.client.post("/rerank", body, deadline), len(documents))

    async def _embed(self, texts: Sequence[str], deadline: Deadline) -> tuple[DenseMatrix, int]:
        body = {
            "model": self._names[Operation.EMBED],
            "input": list(texts),
            "encoding_format": self._encoding,
            # Without it a text request also matches the image and audio input schemas.
            "modality": "text",
        }
        try:
            answer = await self.client.post("/embeddings", body, deadline)
        except InvalidInput as exc:
            if self._encoding != "base64" or "base64" not in exc.message:
                raise
            # A model with bit-packed embeddings cannot answer in base64: ask in decimals.
            self._encoding = "float"
            return await self._embed(texts, deadline)
        embeddings = decoded(answer, _Embeddings)
        data = in_order(answer, embeddings.data, len(texts))
        rows = [
            base64_row(answer, e.embedding) if isinstance(e.embedding, str) else e.embedding
            for e in data
        ]
        return dense_matrix(answer, rows, len(texts)), embeddings.usage.prompt_tokens


def _choose(
    operation: Operation, configured: str | None, able: list[str], names: str, url: str
) -> str | None:
    if configured is not None:
        if configured not in able:
            raise StartupError(
                f"{_SETTING[operation]}={configured}, but the Infinity at {url} "
                f"serves no such model that can {_CAPABILITY[operation]} (models: {names})"
            )
        return configured
    if len(able) > 1:
        raise StartupError(
            f"the Infinity at {url} serves several models that can "
            f"{_CAPABILITY[operation]} ({', '.join(able)}); set {_SETTING[operation]}"
        )
    return able[0] if able else None
