"""Haystack components over bge-serve (``pip install "bge-client[haystack]"``).

Haystack's TEI components already reach the service (``HuggingFaceAPITextEmbedder``,
``HuggingFaceTEISparseTextEmbedder``, ``HuggingFaceTEIRanker``: docs/api.md); these add
what they cannot do:

- ``BgeSparseDocumentEmbedder`` / ``BgeSparseTextEmbedder``: sparse vectors held to one
  sparse index space (an answer in another raises ``SparseSpaceMismatch``, where a TEI
  component would store or search vectors that match nothing);
- ``BgeHybridDocumentEmbedder`` / ``BgeHybridTextEmbedder``: dense and sparse vectors from
  one forward pass (``/v1/hybrid-embeddings``), what ``QdrantHybridRetriever`` takes,
  where the TEI pair costs two passes and two requests;
- ``BgeRanker``: the cross-encoder, batched at the server's limit, with typed errors.

Each has ``run`` and ``run_async``, and serialises with ``to_dict`` / ``from_dict``
(the API key as a ``Secret``: by default the ``BGE_API_KEY`` variable, when set).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.dataclasses import SparseEmbedding
from haystack.utils import Secret, deserialize_secrets_inplace

from bge_client._client import DEFAULT_TIMEOUT_S, DEFAULT_URL, AsyncClient, Client
from bge_client._types import HybridEmbeddings, Ranking, SparseSpace, SparseVector

__all__ = [
    "BgeHybridDocumentEmbedder",
    "BgeHybridTextEmbedder",
    "BgeRanker",
    "BgeSparseDocumentEmbedder",
    "BgeSparseTextEmbedder",
]


def _default_key() -> Secret:
    return Secret.from_env_var("BGE_API_KEY", strict=False)


def _haystack(vector: SparseVector) -> SparseEmbedding:
    return SparseEmbedding(indices=vector.indices, values=vector.values)


class _Component:
    """What every component here is made with, and how it is written to and read from a
    pipeline's YAML."""

    def __init__(
        self,
        url: str,
        api_key: Secret | None,
        timeout: float,
        sparse_space: SparseSpace | None = None,
    ) -> None:
        self.url = url
        self.api_key = api_key if api_key is not None else _default_key()
        self.timeout = timeout
        self.sparse_space = sparse_space
        options: dict[str, Any] = {
            "api_key": self.api_key.resolve_value(),
            "timeout": timeout,
            "sparse_space": sparse_space,
        }
        self._client = Client(url, **options)
        self._async_client = AsyncClient(url, **options)

    def to_dict(self) -> dict[str, Any]:
        space = self.sparse_space
        return default_to_dict(
            self,
            url=self.url,
            api_key=self.api_key.to_dict(),
            timeout=self.timeout,
            sparse_space=None if space is None else space.metadata(),
            **self._more(),
        )

    def _more(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        parameters = data.get("init_parameters", {})
        deserialize_secrets_inplace(parameters, keys=["api_key"])
        parameters["sparse_space"] = SparseSpace.from_metadata(parameters.get("sparse_space"))
        built: Self = default_from_dict(cls, data)
        return built


@component
class BgeSparseTextEmbedder(_Component):
    """A query's bge-m3 sparse vector (``POST /v1/sparse-embeddings``), held to
    ``sparse_space`` (None: the server's at first contact)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        sparse_space: SparseSpace | None = None,
    ) -> None:
        # Not super(): @component rebuilds the class, which breaks its __class__ cell.
        _Component.__init__(self, url, api_key, timeout, sparse_space)

    @component.output_types(sparse_embedding=SparseEmbedding)
    def run(self, text: str) -> dict[str, SparseEmbedding]:
        return {"sparse_embedding": _haystack(self._client.sparse([text]).vectors[0])}

    @component.output_types(sparse_embedding=SparseEmbedding)
    async def run_async(self, text: str) -> dict[str, SparseEmbedding]:
        vectors = (await self._async_client.sparse([text])).vectors
        return {"sparse_embedding": _haystack(vectors[0])}


def _with_sparse(documents: list[Document], vectors: list[SparseVector]) -> list[Document]:
    # New documents, as Haystack's own embedders return: the inputs stay as they were.
    return [
        dataclasses.replace(d, sparse_embedding=_haystack(v))
        for d, v in zip(documents, vectors, strict=True)
    ]


def _texts(documents: list[Document]) -> list[str]:
    return [d.content or "" for d in documents]


@component
class BgeSparseDocumentEmbedder(_Component):
    """Each document's bge-m3 sparse vector in ``sparse_embedding``, held to
    ``sparse_space`` (None: the server's at first contact)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        sparse_space: SparseSpace | None = None,
    ) -> None:
        # Not super(): @component rebuilds the class, which breaks its __class__ cell.
        _Component.__init__(self, url, api_key, timeout, sparse_space)

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, list[Document]]:
        vectors = self._client.sparse(_texts(documents)).vectors if documents else []
        return {"documents": _with_sparse(documents, vectors)}

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document]) -> dict[str, list[Document]]:
        vectors = (await self._async_client.sparse(_texts(documents))).vectors if documents else []
        return {"documents": _with_sparse(documents, vectors)}


@component
class BgeHybridTextEmbedder(_Component):
    """A query's dense ``embedding`` and ``sparse_embedding`` from one forward pass
    (``POST /v1/hybrid-embeddings``): what ``QdrantHybridRetriever`` takes."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        sparse_space: SparseSpace | None = None,
    ) -> None:
        # Not super(): @component rebuilds the class, which breaks its __class__ cell.
        _Component.__init__(self, url, api_key, timeout, sparse_space)

    @staticmethod
    def _output(embedded: HybridEmbeddings) -> dict[str, Any]:
        vector = embedded.vectors[0]
        return {"embedding": vector.dense, "sparse_embedding": _haystack(vector.sparse)}

    @component.output_types(embedding=list[float], sparse_embedding=SparseEmbedding)
    def run(self, text: str) -> dict[str, Any]:
        return self._output(self._client.hybrid([text]))

    @component.output_types(embedding=list[float], sparse_embedding=SparseEmbedding)
    async def run_async(self, text: str) -> dict[str, Any]:
        return self._output(await self._async_client.hybrid([text]))


def _with_hybrid(documents: list[Document], embedded: HybridEmbeddings | None) -> list[Document]:
    if embedded is None:
        return []
    return [
        dataclasses.replace(d, embedding=v.dense, sparse_embedding=_haystack(v.sparse))
        for d, v in zip(documents, embedded.vectors, strict=True)
    ]


@component
class BgeHybridDocumentEmbedder(_Component):
    """Each document's dense ``embedding`` and ``sparse_embedding`` from one forward pass,
    for a ``QdrantDocumentStore(use_sparse_embeddings=True)``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        sparse_space: SparseSpace | None = None,
    ) -> None:
        # Not super(): @component rebuilds the class, which breaks its __class__ cell.
        _Component.__init__(self, url, api_key, timeout, sparse_space)

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, list[Document]]:
        embedded = self._client.hybrid(_texts(documents)) if documents else None
        return {"documents": _with_hybrid(documents, embedded)}

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document]) -> dict[str, list[Document]]:
        embedded = await self._async_client.hybrid(_texts(documents)) if documents else None
        return {"documents": _with_hybrid(documents, embedded)}


def _ranked(documents: list[Document], ranking: Ranking) -> list[Document]:
    return [dataclasses.replace(documents[r.index], score=r.score) for r in ranking.results]


@component
class BgeRanker(_Component):
    """The documents reranked by the cross-encoder (``POST /v1/rerank``), best ``top_k``
    first, each ``score`` the sigmoid of its logit."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        top_k: int = 10,
    ) -> None:
        if top_k < 1:
            raise ValueError("`top_k` must be at least 1")
        _Component.__init__(self, url, api_key, timeout)
        self.top_k = top_k

    def _more(self) -> dict[str, Any]:
        return {"top_k": self.top_k}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        parameters = data.get("init_parameters", {})
        deserialize_secrets_inplace(parameters, keys=["api_key"])
        parameters.pop("sparse_space", None)
        built: Self = default_from_dict(cls, data)
        return built

    @component.output_types(documents=list[Document])
    def run(
        self, query: str, documents: list[Document], top_k: int | None = None
    ) -> dict[str, list[Document]]:
        if not documents:
            return {"documents": []}
        ranking = self._client.rerank(query, _texts(documents), top_n=top_k or self.top_k)
        return {"documents": _ranked(documents, ranking)}

    @component.output_types(documents=list[Document])
    async def run_async(
        self, query: str, documents: list[Document], top_k: int | None = None
    ) -> dict[str, list[Document]]:
        if not documents:
            return {"documents": []}
        texts = _texts(documents)
        ranking = await self._async_client.rerank(query, texts, top_n=top_k or self.top_k)
        return {"documents": _ranked(documents, ranking)}
