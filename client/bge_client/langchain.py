"""LangChain components over bge-serve (``pip install "bge-client[langchain]"``).

- ``BgeEmbeddings``: bge-m3 dense vectors, a LangChain ``Embeddings``;
- ``BgeSparseEmbeddings``: bge-m3 lexical weights, a langchain-qdrant ``SparseEmbeddings``,
  so ``QdrantVectorStore`` runs ``RetrievalMode.SPARSE`` and ``HYBRID`` on the service's
  sparse vectors (langchain-qdrant's own, ``FastEmbedSparse``, runs a local model);
- ``BgeRerank``: the cross-encoder as a ``BaseDocumentCompressor``;
- ``bge_index_store``: a hybrid ``QdrantVectorStore`` over a collection ``bge-index`` built,
  with its vector names and payload, held to the sparse space the collection records.

Every component has its blocking and its async methods (on ``Client`` and ``AsyncClient``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore, RetrievalMode
from langchain_qdrant import SparseEmbeddings as QdrantSparseEmbeddings
from langchain_qdrant import SparseVector as QdrantSparseVector
from pydantic import ConfigDict, Field, PrivateAttr
from qdrant_client import QdrantClient

from bge_client._client import DEFAULT_TIMEOUT_S, DEFAULT_URL, AsyncClient, Client
from bge_client._types import Ranking, SparseSpace, SparseVector

__all__ = [
    "BGE_INDEX_CONTENT",
    "BGE_INDEX_DENSE",
    "BGE_INDEX_SPARSE",
    "BgeEmbeddings",
    "BgeRerank",
    "BgeSparseEmbeddings",
    "bge_index_store",
]

# What bge-index names things (retrieval/store.py): the named vectors and the payload key
# of the text; every other payload field is the corpus row's own.
BGE_INDEX_DENSE, BGE_INDEX_SPARSE, BGE_INDEX_CONTENT = "dense", "sparse", "text"


class BgeEmbeddings(Embeddings):
    """bge-m3 dense vectors from ``POST /v1/embeddings`` (bge-m3 needs no query prefix, so
    queries and documents are embedded alike)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        batch_size: int | None = None,
    ) -> None:
        options: dict[str, Any] = {"api_key": api_key, "timeout": timeout, "batch_size": batch_size}
        self.client = Client(url, **options)
        self.async_client = AsyncClient(url, **options)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.client.embed(texts).vectors

    def embed_query(self, text: str) -> list[float]:
        return self.client.embed([text]).vectors[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return (await self.async_client.embed(texts)).vectors

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.async_client.embed([text])).vectors[0]


def _qdrant(vector: SparseVector) -> QdrantSparseVector:
    return QdrantSparseVector(indices=vector.indices, values=vector.values)


class BgeSparseEmbeddings(QdrantSparseEmbeddings):
    """bge-m3 lexical weights from ``POST /v1/sparse-embeddings``, in one sparse space:
    ``sparse_space`` (e.g. what a collection records), or the server's at first contact.
    An answer in another space raises ``SparseSpaceMismatch``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        batch_size: int | None = None,
        sparse_space: SparseSpace | None = None,
    ) -> None:
        options: dict[str, Any] = {
            "api_key": api_key,
            "timeout": timeout,
            "batch_size": batch_size,
            "sparse_space": sparse_space,
        }
        self.client = Client(url, **options)
        self.async_client = AsyncClient(url, **options)

    def embed_documents(self, texts: list[str]) -> list[QdrantSparseVector]:
        return [_qdrant(v) for v in self.client.sparse(texts).vectors]

    def embed_query(self, text: str) -> QdrantSparseVector:
        return _qdrant(self.client.sparse([text]).vectors[0])

    async def aembed_documents(self, texts: list[str]) -> list[QdrantSparseVector]:
        return [_qdrant(v) for v in (await self.async_client.sparse(texts)).vectors]

    async def aembed_query(self, text: str) -> QdrantSparseVector:
        return _qdrant((await self.async_client.sparse([text])).vectors[0])


def _compressed(documents: Sequence[Document], ranking: Ranking) -> list[Document]:
    # The documents themselves, best first, each with its score (as CohereRerank does).
    return [
        Document(
            page_content=documents[r.index].page_content,
            metadata={**documents[r.index].metadata, "relevance_score": r.score},
            id=documents[r.index].id,
        )
        for r in ranking.results
    ]


class BgeRerank(BaseDocumentCompressor):
    """The documents reranked by the cross-encoder (``POST /v1/rerank``), best ``top_n``
    first, each with ``metadata["relevance_score"]`` (the sigmoid of the logit)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    url: str = DEFAULT_URL
    api_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    top_n: int | None = Field(default=3, ge=1)
    _client: Client = PrivateAttr()
    _async_client: AsyncClient = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        options: dict[str, Any] = {"api_key": self.api_key, "timeout": self.timeout}
        self._client = Client(self.url, **options)
        self._async_client = AsyncClient(self.url, **options)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        texts = [d.page_content for d in documents]
        return _compressed(documents, self._client.rerank(query, texts, top_n=self.top_n))

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        texts = [d.page_content for d in documents]
        ranking = await self._async_client.rerank(query, texts, top_n=self.top_n)
        return _compressed(documents, ranking)


class _BgeIndexStore(QdrantVectorStore):
    """bge-index writes a corpus row's fields beside its text, not under a metadata key:
    they are the documents' metadata here."""

    @classmethod
    def _document_from_point(
        cls,
        scored_point: Any,
        collection_name: str,
        content_payload_key: str,
        metadata_payload_key: str,
    ) -> Document:
        payload = dict(scored_point.payload or {})
        content = payload.pop(content_payload_key, "")
        metadata = {**payload, "_id": scored_point.id, "_collection_name": collection_name}
        return Document(page_content=content, metadata=metadata)


def _collection_of(qdrant: QdrantClient, name: str) -> str:
    # bge-index --alias: the alias names the live collection, whose metadata is wanted.
    aliases = qdrant.get_aliases().aliases
    return next((a.collection_name for a in aliases if a.alias_name == name), name)


def bge_index_store(
    qdrant: QdrantClient,
    collection_name: str,
    url: str = DEFAULT_URL,
    *,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retrieval_mode: RetrievalMode = RetrievalMode.HYBRID,
) -> QdrantVectorStore:
    """A ``QdrantVectorStore`` over ``collection_name`` (a collection or an alias) as
    ``bge-index`` built it: dense vectors ``dense``, sparse ``sparse``, the text under
    ``text`` and the corpus row's other fields as each document's metadata.

    The sparse embeddings are held to the space the collection records; a server that
    answers in another raises ``SparseSpaceMismatch`` here, before any search. A
    collection built before bge-index recorded its space is assumed to be in the
    server's, with a warning."""
    metadata = qdrant.get_collection(_collection_of(qdrant, collection_name)).config.metadata
    recorded = SparseSpace.from_metadata(metadata)
    options: dict[str, Any] = {"api_key": api_key, "timeout": timeout}
    sparse = BgeSparseEmbeddings(url, sparse_space=recorded, **options)
    served = sparse.client.sparse_space()
    if recorded is None:
        warnings.warn(
            f"collection `{collection_name}` records no sparse index space (built before "
            f"bge-index recorded it): assuming it is the server's, {served}",
            stacklevel=2,
        )
    return _BgeIndexStore(
        client=qdrant,
        collection_name=collection_name,
        embedding=BgeEmbeddings(url, **options),
        sparse_embedding=sparse,
        retrieval_mode=retrieval_mode,
        vector_name=BGE_INDEX_DENSE,
        sparse_vector_name=BGE_INDEX_SPARSE,
        content_payload_key=BGE_INDEX_CONTENT,
    )
