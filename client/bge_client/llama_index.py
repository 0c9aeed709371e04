"""LlamaIndex components over bge-serve (``pip install "bge-client[llama-index]"``).

- ``sparse_doc_fn`` / ``sparse_query_fn``: what ``QdrantVectorStore(enable_hybrid=True,
  sparse_doc_fn=..., sparse_query_fn=...)`` calls for sparse vectors, here bge-m3's
  lexical weights from the service (its default runs a local SPLADE model);
- ``BgeSparseEmbedding``: the same as a ``BaseSparseEmbedding`` (llama-index-core 0.14);
- ``BgeEmbedding``: bge-m3 dense vectors, a ``BaseEmbedding``;
- ``BgeRerank``: the cross-encoder as a node postprocessor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding, SparseEmbedding
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle
from pydantic import Field, PrivateAttr

from bge_client._client import DEFAULT_TIMEOUT_S, DEFAULT_URL, AsyncClient, Client
from bge_client._types import Ranking, SparseSpace, SparseVector

__all__ = [
    "BatchSparseEncoding",
    "BgeEmbedding",
    "BgeRerank",
    "BgeSparseEmbedding",
    "sparse_doc_fn",
    "sparse_query_fn",
]

# llama-index-vector-stores-qdrant's SparseEncoderCallable: texts -> (indices, values).
BatchSparseEncoding = tuple[list[list[int]], list[list[float]]]


def _encoder(client: Client) -> Callable[[list[str]], BatchSparseEncoding]:
    def encode(texts: list[str]) -> BatchSparseEncoding:
        vectors = client.sparse(texts).vectors
        return [v.indices for v in vectors], [v.values for v in vectors]

    return encode


def sparse_doc_fn(client: Client) -> Callable[[list[str]], BatchSparseEncoding]:
    """``QdrantVectorStore``'s ``sparse_doc_fn``: the documents' sparse vectors, in
    ``client``'s sparse space. Give ``sparse_query_fn`` the same client, so stored and
    query vectors are held to one space."""
    return _encoder(client)


def sparse_query_fn(client: Client) -> Callable[[list[str]], BatchSparseEncoding]:
    """``QdrantVectorStore``'s ``sparse_query_fn``: bge-m3 weighs a query as it weighs a
    document, so this is ``sparse_doc_fn``'s encoder (the store calls it synchronously,
    from ``aquery`` too)."""
    return _encoder(client)


def _as_dict(vector: SparseVector) -> SparseEmbedding:
    return dict(zip(vector.indices, vector.values, strict=True))


class _Connection:
    """The two clients each component holds: one blocking, one for the ``a*`` methods."""

    def __init__(self, url: str, **options: Any) -> None:
        self.sync = Client(url, **options)
        self.async_ = AsyncClient(url, **options)


class BgeSparseEmbedding(BaseSparseEmbedding):
    """bge-m3 lexical weights (``{index: weight}``) from ``POST /v1/sparse-embeddings``,
    held to ``sparse_space`` (or the server's, at first contact)."""

    model_name: str = "BAAI/bge-m3"
    url: str = DEFAULT_URL
    api_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    sparse_space: SparseSpace | None = None
    _bge: _Connection = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._bge = _Connection(
            self.url, api_key=self.api_key, timeout=self.timeout, sparse_space=self.sparse_space
        )

    @classmethod
    def class_name(cls) -> str:
        return "BgeSparseEmbedding"

    def _get_query_embedding(self, query: str) -> SparseEmbedding:
        return _as_dict(self._bge.sync.sparse([query]).vectors[0])

    async def _aget_query_embedding(self, query: str) -> SparseEmbedding:
        return _as_dict((await self._bge.async_.sparse([query])).vectors[0])

    def _get_text_embedding(self, text: str) -> SparseEmbedding:
        return self._get_query_embedding(text)

    async def _aget_text_embedding(self, text: str) -> SparseEmbedding:
        return await self._aget_query_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[SparseEmbedding]:
        return [_as_dict(v) for v in self._bge.sync.sparse(texts).vectors]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[SparseEmbedding]:
        return [_as_dict(v) for v in (await self._bge.async_.sparse(texts)).vectors]


class BgeEmbedding(BaseEmbedding):
    """bge-m3 dense vectors from ``POST /v1/embeddings`` (no query prefix: bge-m3 needs
    none)."""

    model_name: str = "BAAI/bge-m3"
    url: str = DEFAULT_URL
    api_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    _bge: _Connection = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._bge = _Connection(self.url, api_key=self.api_key, timeout=self.timeout)

    @classmethod
    def class_name(cls) -> str:
        return "BgeEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._bge.sync.embed([query]).vectors[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._bge.async_.embed([query])).vectors[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_query_embedding(text)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await self._aget_query_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._bge.sync.embed(texts).vectors

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return (await self._bge.async_.embed(texts)).vectors


def _reranked(nodes: list[NodeWithScore], ranking: Ranking) -> list[NodeWithScore]:
    return [NodeWithScore(node=nodes[r.index].node, score=r.score) for r in ranking.results]


def _query(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None:
        raise ValueError("BgeRerank needs the query: pass query_str or query_bundle")
    return query_bundle.query_str


class BgeRerank(BaseNodePostprocessor):
    """The nodes reranked by the cross-encoder (``POST /v1/rerank``), best ``top_n``
    first, each scored with the sigmoid of its logit."""

    url: str = DEFAULT_URL
    api_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    top_n: int = Field(default=2, ge=1)
    _bge: _Connection = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._bge = _Connection(self.url, api_key=self.api_key, timeout=self.timeout)

    @classmethod
    def class_name(cls) -> str:
        return "BgeRerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        texts = [n.node.get_content() for n in nodes]
        ranking = self._bge.sync.rerank(_query(query_bundle), texts, top_n=self.top_n)
        return _reranked(nodes, ranking)

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        texts = [n.node.get_content() for n in nodes]
        ranking = await self._bge.async_.rerank(_query(query_bundle), texts, top_n=self.top_n)
        return _reranked(nodes, ranking)
