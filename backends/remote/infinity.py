"""Infinity (michaelf34/infinity, e.g. the ROCm image on a 7900 XTX): several models per server.

``GET /models`` lists each model with its capabilities (``embed``, ``rerank``);
``POST /embeddings`` is OpenAI-shaped, ``POST /rerank`` Cohere-shaped. Infinity
has no sparse or ColBERT output and no tokenizer route.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from backends.remote.dialect import (
    Kind,
    Offer,
    Usage,
    base64_row,
    cohere_scores,
    decode,
    dense_matrix,
    expect_ok,
    permutation,
)
from backends.remote.transport import Deadline, RemoteClient
from engine.errors import InvalidInput, StartupError, Unavailable
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

__all__ = ["InfinityDialect"]

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


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]
    usage: Usage


class InfinityDialect:
    kind: Kind = "infinity"
    halves_too_large: bool = False

    def __init__(self, *, embed_model: str | None, rerank_model: str | None) -> None:
        self._configured = {Operation.EMBED: embed_model, Operation.RERANK: rerank_model}
        self._names: dict[Operation, str] = {}
        # base64 float32: exact, and cheaper than decimals for Infinity to write and us to read.
        self._encoding = "base64"

    async def probe(self, client: RemoteClient, deadline: Deadline) -> Offer:
        answer = await client.get("/models", deadline)
        expect_ok(answer, "/models")
        listed = decode(answer, _Models, client, "/models").data
        models: dict[Operation, ModelInfo] = {}
        missing: dict[Operation, str] = {
            Operation.SPARSE: "Infinity has no bge-m3 sparse or ColBERT output; serve them "
            "from the flag backend"
        }
        names = ", ".join(m.id for m in listed) or "none"
        for operation, capability in _CAPABILITY.items():
            able = [m.id for m in listed if capability in m.capabilities]
            chosen = self._choose(operation, able, names, client)
            if chosen is None:
                missing[operation] = f"it lists no model that can {capability} (models: {names})"
                continue
            self._names[operation] = chosen
            dimension = None
            if operation is Operation.EMBED:
                dense, _ = await self._embed(client, [_PROBE_TEXT], deadline)
                dimension = int(dense.shape[1])
            # Infinity reports neither its token limit nor its vocabulary: 0, unknown.
            models[operation] = ModelInfo(chosen, 0, 0, dimension=dimension)
        return Offer(
            kind=self.kind,
            operations=frozenset(models),
            outputs=frozenset({Output.DENSE}) if Operation.EMBED in models else frozenset(),
            models=models,
            max_batch_size=_MAX_ITEMS,
            missing=missing,
        )

    def _choose(
        self, operation: Operation, able: list[str], names: str, client: RemoteClient
    ) -> str | None:
        configured = self._configured[operation]
        if configured is not None:
            if configured not in able:
                raise StartupError(
                    f"{_SETTING[operation]}={configured}, but the Infinity at {client.url} "
                    f"serves no such model that can {_CAPABILITY[operation]} (models: {names})"
                )
            return configured
        if len(able) > 1:
            raise StartupError(
                f"the Infinity at {client.url} serves several models that can "
                f"{_CAPABILITY[operation]} ({', '.join(able)}); set {_SETTING[operation]}"
            )
        return able[0] if able else None

    async def encode(
        self,
        client: RemoteClient,
        texts: Sequence[str],
        outputs: frozenset[Output],
        offer: Offer,
        deadline: Deadline,
        options: EncodeOptions = DEFAULT_OPTIONS,
    ) -> Encoding:
        if outputs != {Output.DENSE}:
            raise Unavailable(f"the Infinity at {client.url} computes dense vectors only")
        if not options.normalize:
            raise InvalidInput(
                f"`normalize`: false is not available: the Infinity at {client.url} "
                "L2-normalises every vector, and its /embeddings has no option to skip it",
                param="normalize",
            )
        if options.truncate_left:
            raise InvalidInput(
                f"`truncation_direction`: Left is not available: the Infinity at {client.url} "
                "always cuts the end of a long text",
                param="truncation_direction",
            )
        dense, tokens = await self._embed(client, texts, deadline)
        return Encoding(token_count=tokens, dense=dense)

    async def score(
        self,
        client: RemoteClient,
        query: str,
        documents: Sequence[str],
        offer: Offer,
        deadline: Deadline,
    ) -> Scores:
        body = {
            "model": self._names[Operation.RERANK],
            "query": query,
            "documents": list(documents),
            "raw_scores": True,
        }
        answer = await client.post("/rerank", body, deadline)
        return cohere_scores(answer, len(documents), client, "/rerank")

    async def tokenize(
        self, client: RemoteClient, texts: Sequence[str], offer: Offer, deadline: Deadline
    ) -> tuple[list[int], ...]:
        raise Unavailable(f"the Infinity at {client.url} has no tokenizer route")

    async def tokens(
        self,
        client: RemoteClient,
        texts: Sequence[str],
        add_special_tokens: bool,
        offer: Offer,
        deadline: Deadline,
    ) -> tuple[tuple[Token, ...], ...]:
        raise Unavailable(f"the Infinity at {client.url} has no tokenizer route")

    async def decode(
        self,
        client: RemoteClient,
        ids: Sequence[Sequence[int]],
        skip_special_tokens: bool,
        offer: Offer,
        deadline: Deadline,
    ) -> tuple[str, ...]:
        raise Unavailable(f"the Infinity at {client.url} has no decode route")

    async def _embed(
        self, client: RemoteClient, texts: Sequence[str], deadline: Deadline
    ) -> tuple[DenseMatrix, int]:
        body = {
            "model": self._names[Operation.EMBED],
            "input": list(texts),
            "encoding_format": self._encoding,
            # Without it a text request also matches the image and audio input schemas.
            "modality": "text",
        }
        path = "/embeddings"
        try:
            answer = await client.post(path, body, deadline)
        except InvalidInput as exc:
            if self._encoding != "base64" or "base64" not in exc.message:
                raise
            # A model with bit-packed embeddings cannot answer in base64: ask in decimals.
            self._encoding = "float"
            return await self._embed(client, texts, deadline)
        embeddings = decode(answer, _Embeddings, client, path)
        data = sorted(embeddings.data, key=lambda e: e.index)
        permutation([e.index for e in data], len(texts), client, path)
        rows = [
            base64_row(e.embedding, client, path) if isinstance(e.embedding, str) else e.embedding
            for e in data
        ]
        return dense_matrix(rows, len(texts), client, path), embeddings.usage.prompt_tokens
