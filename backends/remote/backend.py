"""The remote backend: TEI, Infinity, another instance of this service or a RunPod
worker, over HTTP.

Each operation is sent to its own URL (REMOTE_EMBED_URL, REMOTE_SPARSE_URL,
REMOTE_RERANK_URL, each defaulting to REMOTE_URL), because TEI serves one model
per container; operations that share a URL share one endpoint (one connection
pool, one admission). Each call goes to its URL's endpoint, which splits it
into chunks for the probed remote (``Remote``, of the kind kinds.py names) and
merges the answers here. Like every backend it returns raw token-id weights and
raw logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import numpy as np

from backends.remote.contract import PASSED_ON
from backends.remote.endpoint import Endpoint
from backends.remote.transport import TransportFactory
from engine.backend import BackendHealth, Capabilities
from engine.errors import StartupError
from engine.router import CHAIN_SETTING
from engine.settings import Settings
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

__all__ = ["RemoteBackend"]

_URL_SETTING = {
    Operation.EMBED: "REMOTE_EMBED_URL",
    Operation.LEXICAL_COLBERT: "REMOTE_SPARSE_URL",
    Operation.RERANK: "REMOTE_RERANK_URL",
}


class RemoteBackend:
    def __init__(
        self,
        settings: Settings,
        operations: frozenset[Operation],
        *,
        transport: TransportFactory | None = None,
    ) -> None:
        urls = {op: _url(settings, op) for op in sorted(operations)}
        self._endpoints: dict[str, Endpoint] = {}
        for url in dict.fromkeys(urls.values()):
            served = frozenset(op for op, u in urls.items() if u == url)
            self._endpoints[url] = Endpoint(url, served, settings, transport)
        self._by_operation = {op: self._endpoints[url] for op, url in urls.items()}
        # What the chains ask of it; start() checks that each remote can do it.
        self._capabilities = Capabilities(
            operations=operations,
            outputs=frozenset(Output)
            if Operation.LEXICAL_COLBERT in operations
            else frozenset({Output.DENSE}),
            embedding_model=settings.embedding_model_name
            if operations & {Operation.EMBED, Operation.LEXICAL_COLBERT}
            else None,
            reranker_model=settings.reranker_model_name if Operation.RERANK in operations else None,
            max_batch_size=settings.max_batch_size,
            # Whether the remote can is its offer's to say (TEI and bge-serve can, Infinity
            # cannot): Remote.refuse, per call.
            options=PASSED_ON,
        )

    @property
    def name(self) -> str:
        return "remote"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    async def start(self) -> None:
        for endpoint in self._endpoints.values():
            await endpoint.start()

    async def stop(self) -> None:
        for endpoint in self._endpoints.values():
            await endpoint.stop()

    def health(self) -> BackendHealth:
        endpoints = self._endpoints.values()
        clients = [e.client for e in endpoints]
        return BackendHealth(
            loaded=all(e.remote is not None for e in endpoints),
            healthy=all(e.up for e in endpoints),
            device="remote",
            detail="; ".join(e.describe() for e in endpoints),
            stats={
                "requests": sum(c.requests for c in clients),
                "retries": sum(c.retried for c in clients),
                "in_flight": sum(c.in_flight for c in clients),
                "rejected_requests": sum(e.admission.counts.rejected_requests for e in endpoints),
                "remotes_down": sum(not e.up for e in endpoints),
            },
        )

    def model_info(self, operation: Operation) -> ModelInfo:
        return self._by_operation[operation].model_info(operation)

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions = DEFAULT_OPTIONS,
    ) -> Encoding:
        dense_only = outputs == {Output.DENSE} and Operation.EMBED in self._by_operation
        endpoint = self._by_operation[Operation.EMBED if dense_only else Operation.LEXICAL_COLBERT]
        endpoint.ready().refuse(outputs, options)
        parts = await endpoint.call(
            texts,
            "encode " + ",".join(sorted(outputs)),
            lambda remote, chunk, deadline: remote.encode(chunk, outputs, options, deadline),
        )
        return _merge(parts)

    async def score(self, query: str, documents: Sequence[str]) -> Scores:
        parts = await self._by_operation[Operation.RERANK].call(
            documents,
            "score",
            lambda remote, chunk, deadline: remote.score(query, chunk, deadline),
        )
        return Scores(
            logits=np.concatenate([p.logits for p in parts]),
            token_count=sum(p.token_count for p in parts),
        )

    async def token_ids(self, texts: Sequence[str]) -> tuple[list[int], ...]:
        parts = await self._tokenizing().call(
            texts, "tokenize", lambda remote, chunk, deadline: remote.token_ids(chunk, deadline)
        )
        return tuple(ids for part in parts for ids in part)

    async def tokens(
        self, texts: Sequence[str], *, add_special_tokens: bool
    ) -> tuple[tuple[Token, ...], ...]:
        parts = await self._tokenizing().call(
            texts,
            "tokens",
            lambda remote, chunk, deadline: remote.tokens(chunk, add_special_tokens, deadline),
        )
        return tuple(row for part in parts for row in part)

    async def decode(
        self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool
    ) -> tuple[str, ...]:
        parts = await self._tokenizing().call(
            ids,
            "decode",
            lambda remote, chunk, deadline: remote.decode(chunk, skip_special_tokens, deadline),
        )
        return tuple(text for part in parts for text in part)

    def _tokenizing(self) -> Endpoint:
        """The embedding model's endpoint: tokens are the embedding tokenizer's."""
        operation = (
            Operation.EMBED if Operation.EMBED in self._by_operation else Operation.LEXICAL_COLBERT
        )
        return self._by_operation[operation]


def _url(settings: Settings, operation: Operation) -> str:
    override = {
        Operation.EMBED: settings.remote_embed_url,
        Operation.LEXICAL_COLBERT: settings.remote_sparse_url,
        Operation.RERANK: settings.remote_rerank_url,
    }[operation]
    url = override or settings.remote_url
    if not url:
        raise StartupError(
            f"{CHAIN_SETTING[operation]} names the remote backend, but neither "
            f"{_URL_SETTING[operation]} nor REMOTE_URL is set"
        )
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise StartupError(
            f"{_URL_SETTING[operation] if override else 'REMOTE_URL'}={parsed.scheme}://"
            f"{parsed.host}... is not an http(s) URL"
        )
    return url


def _merge(parts: list[Encoding]) -> Encoding:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return Encoding(
        token_count=sum(p.token_count for p in parts),
        dense=np.concatenate([p.dense for p in parts if p.dense is not None])
        if first.dense is not None
        else None,
        lexical=tuple(w for p in parts for w in p.lexical or ())
        if first.lexical is not None
        else None,
        colbert=tuple(m for p in parts for m in p.colbert or ())
        if first.colbert is not None
        else None,
    )
