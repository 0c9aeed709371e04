"""bge-client's framework components (``bge_client.langchain``, ``.llama_index``,
``.haystack``) in the real frameworks, each at its defaults, against a live bge-serve.

    .venv-frameworks/bin/python tests/frameworks/bge_client_cases.py FRAMEWORK URL OUT < inputs.json

runs every case of FRAMEWORK (langchain, llama_index, haystack) and writes
``{"versions": {...}, "cases": {name: {"value": ...} | {"error": ..., "trace": [...]}}}``
to OUT, as ``clients.py`` does; ``tests/integration/test_client_frameworks.py`` checks
each value. The snippets of docs/clients/*.md are these cases, line for line where the
comment says so. This runs in the frameworks' environment: it imports nothing of the
project's but bge_client, installed there from client/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from harness import Cases, Inputs

DISTRIBUTIONS = {
    "langchain": ["bge-client", "langchain-core", "langchain-qdrant", "qdrant-client"],
    "llama_index": [
        "bge-client",
        "llama-index-core",
        "llama-index-vector-stores-qdrant",
        "qdrant-client",
    ],
    "haystack": ["bge-client", "haystack-ai", "qdrant-haystack", "qdrant-client"],
}
CASES = Cases(DISTRIBUTIONS)
case = CASES.case


def mismatch(run: Callable[[], Any]) -> dict[str, Any]:
    """What a call held to the wrong sparse space raised: its type and message."""
    from bge_client import SparseSpaceMismatch

    try:
        run()
    except SparseSpaceMismatch as error:
        return {"raised": type(error).__name__, "message": str(error)}
    return {"raised": None, "message": ""}


# --- LangChain ----------------------------------------------------------------------------


def langchain_store(url: str, inputs: Inputs, mode: str) -> Any:
    # docs/clients/langchain.md, "Hybrid search in Qdrant", with `mode` for HYBRID.
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    from bge_client.langchain import BgeEmbeddings, BgeSparseEmbeddings

    store = QdrantVectorStore.from_texts(
        inputs["documents"],
        embedding=BgeEmbeddings(url),
        sparse_embedding=BgeSparseEmbeddings(url),
        retrieval_mode=getattr(RetrievalMode, mode),
        location=":memory:",
        collection_name="docs",
    )
    return store


@case("langchain", "hybrid")
def langchain_hybrid(url: str, inputs: Inputs) -> Any:
    store = langchain_store(url, inputs, "HYBRID")
    return [doc.page_content for doc in store.similarity_search(inputs["query"], k=3)]


@case("langchain", "sparse")
def langchain_sparse(url: str, inputs: Inputs) -> Any:
    store = langchain_store(url, inputs, "SPARSE")
    return [doc.page_content for doc in store.similarity_search(inputs["query"], k=3)]


@case("langchain", "async")
def langchain_async(url: str, inputs: Inputs) -> Any:
    from langchain_core.documents import Document

    from bge_client.langchain import BgeEmbeddings, BgeRerank, BgeSparseEmbeddings

    async def run() -> Any:
        dense, sparse = BgeEmbeddings(url), BgeSparseEmbeddings(url)
        documents = [Document(page_content=text) for text in inputs["documents"]]
        reranked = await BgeRerank(url=url).acompress_documents(documents, inputs["query"])
        query = await sparse.aembed_query(inputs["query"])
        return {
            "dense": await dense.aembed_documents(inputs["documents"]),
            "dense_query": await dense.aembed_query(inputs["query"]),
            "sparse": [
                [v.indices, v.values] for v in await sparse.aembed_documents(inputs["documents"])
            ],
            "sparse_query": [query.indices, query.values],
            "reranked": [[d.page_content, d.metadata["relevance_score"]] for d in reranked],
        }

    # Twice, each on its own event loop, as two asyncio.run calls in a script do: the
    # second must not trip over connections the first loop opened.
    asyncio.run(run())
    return asyncio.run(run())


@case("langchain", "rerank")
def langchain_rerank(url: str, inputs: Inputs) -> Any:
    from langchain_core.documents import Document

    from bge_client.langchain import BgeRerank

    documents = [Document(page_content=text) for text in inputs["documents"]]
    reranked = BgeRerank(url=url).compress_documents(documents, inputs["query"])
    return [[d.page_content, d.metadata["relevance_score"]] for d in reranked]


@case("langchain", "bge_index_store")
def langchain_bge_index(url: str, inputs: Inputs) -> Any:
    # docs/clients/langchain.md, "Over a collection bge-index built".
    from qdrant_client import QdrantClient

    from bge_client.langchain import bge_index_store

    qdrant = QdrantClient(path=inputs["qdrant_path"])
    try:
        store = bge_index_store(qdrant, inputs["collection"], url)
        hits = store.similarity_search(inputs["query"], k=3)
        return [[doc.page_content, doc.metadata.get("doc_id")] for doc in hits]
    finally:
        qdrant.close()


@case("langchain", "mismatch")
def langchain_mismatch(url: str, inputs: Inputs) -> Any:
    from bge_client import SparseSpace
    from bge_client.langchain import BgeSparseEmbeddings

    wrong = SparseSpace("hash", 4096)
    return mismatch(lambda: BgeSparseEmbeddings(url, sparse_space=wrong).embed_query("x"))


@case("langchain", "api_key")
def langchain_api_key(url: str, inputs: Inputs) -> Any:
    from bge_client import AuthenticationError
    from bge_client.langchain import BgeEmbeddings

    keyed = inputs["keyed_url"]
    vector = BgeEmbeddings(keyed, api_key=inputs["api_key"]).embed_query(inputs["query"])
    try:
        BgeEmbeddings(keyed).embed_query(inputs["query"])
    except AuthenticationError as error:
        return {"vector": vector, "refused": error.status, "message": error.message}
    return {"vector": vector, "refused": None, "message": ""}


# --- LlamaIndex ---------------------------------------------------------------------------


@case("llama_index", "hybrid")
def llama_index_hybrid(url: str, inputs: Inputs) -> Any:
    # docs/clients/llama-index.md, "Hybrid search in Qdrant".
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    from bge_client import Client
    from bge_client.llama_index import BgeEmbedding, sparse_doc_fn, sparse_query_fn

    bge = Client(url)
    store = QdrantVectorStore(
        collection_name="docs",
        client=QdrantClient(location=":memory:"),
        enable_hybrid=True,
        sparse_doc_fn=sparse_doc_fn(bge),
        sparse_query_fn=sparse_query_fn(bge),
    )
    index = VectorStoreIndex.from_documents(
        [Document(text=text) for text in inputs["documents"]],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=BgeEmbedding(url=url),
    )
    retriever = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=3)
    return [hit.node.get_content() for hit in retriever.retrieve(inputs["query"])]


@case("llama_index", "sparse_embedding")
def llama_index_sparse_embedding(url: str, inputs: Inputs) -> Any:
    from bge_client.llama_index import BgeSparseEmbedding

    embedding = BgeSparseEmbedding(url=url)

    async def run() -> Any:
        return await embedding.aget_query_embedding(inputs["query"])

    def listed(weights: dict[int, float]) -> list[list[Any]]:
        return [sorted(weights), [weights[i] for i in sorted(weights)]]

    return {
        "documents": [listed(w) for w in embedding.get_text_embedding_batch(inputs["documents"])],
        "query": listed(embedding.get_query_embedding(inputs["query"])),
        "async_query": listed(asyncio.run(run())),
    }


@case("llama_index", "async")
def llama_index_async(url: str, inputs: Inputs) -> Any:
    from llama_index.core.schema import NodeWithScore, TextNode

    from bge_client.llama_index import BgeEmbedding, BgeRerank

    async def run() -> Any:
        nodes = [NodeWithScore(node=TextNode(text=text)) for text in inputs["documents"]]
        ranked = await BgeRerank(url=url).apostprocess_nodes(nodes, query_str=inputs["query"])
        embedding = BgeEmbedding(url=url)
        return {
            "dense": await embedding.aget_text_embedding_batch(inputs["documents"]),
            "dense_query": await embedding.aget_query_embedding(inputs["query"]),
            "reranked": [[n.node.get_content(), n.score] for n in ranked],
        }

    return asyncio.run(run())


@case("llama_index", "rerank")
def llama_index_rerank(url: str, inputs: Inputs) -> Any:
    from llama_index.core.schema import NodeWithScore, TextNode

    from bge_client.llama_index import BgeRerank

    nodes = [NodeWithScore(node=TextNode(text=text)) for text in inputs["documents"]]
    ranked = BgeRerank(url=url).postprocess_nodes(nodes, query_str=inputs["query"])
    return [[n.node.get_content(), n.score] for n in ranked]


@case("llama_index", "mismatch")
def llama_index_mismatch(url: str, inputs: Inputs) -> Any:
    from bge_client import Client, SparseSpace
    from bge_client.llama_index import sparse_query_fn

    encode = sparse_query_fn(Client(url, sparse_space=SparseSpace("tokenizer", 250002)))
    return mismatch(lambda: encode(["x"]))


# --- Haystack -----------------------------------------------------------------------------


@case("haystack", "hybrid")
def haystack_hybrid(url: str, inputs: Inputs) -> Any:
    # docs/clients/haystack.md, "Hybrid search in Qdrant".
    from haystack import Document, Pipeline
    from haystack.components.writers import DocumentWriter
    from haystack_integrations.components.retrievers.qdrant import QdrantHybridRetriever
    from haystack_integrations.document_stores.qdrant import QdrantDocumentStore

    from bge_client.haystack import BgeHybridDocumentEmbedder, BgeHybridTextEmbedder, BgeRanker

    store = QdrantDocumentStore(
        location=":memory:", embedding_dim=inputs["dimension"], use_sparse_embeddings=True
    )
    indexing = Pipeline()
    indexing.add_component("embedder", BgeHybridDocumentEmbedder(url=url))
    indexing.add_component("writer", DocumentWriter(document_store=store))
    indexing.connect("embedder", "writer")
    indexing.run({"embedder": {"documents": [Document(content=t) for t in inputs["documents"]]}})

    search = Pipeline()
    search.add_component("embedder", BgeHybridTextEmbedder(url=url))
    search.add_component("retriever", QdrantHybridRetriever(document_store=store, top_k=3))
    search.add_component("ranker", BgeRanker(url=url))
    search.connect("embedder.embedding", "retriever.query_embedding")
    search.connect("embedder.sparse_embedding", "retriever.query_sparse_embedding")
    search.connect("retriever.documents", "ranker.documents")
    query = inputs["query"]
    found = search.run(
        {"embedder": {"text": query}, "ranker": {"query": query}},
        include_outputs_from={"retriever"},
    )
    return {
        "retrieved": [doc.content for doc in found["retriever"]["documents"]],
        "reranked": [[doc.content, doc.score] for doc in found["ranker"]["documents"]],
    }


@case("haystack", "sparse")
def haystack_sparse(url: str, inputs: Inputs) -> Any:
    from haystack import Document

    from bge_client.haystack import BgeSparseDocumentEmbedder, BgeSparseTextEmbedder

    documents = [Document(content=t) for t in inputs["documents"]]
    embedded = BgeSparseDocumentEmbedder(url=url).run(documents)["documents"]
    query = BgeSparseTextEmbedder(url=url).run(inputs["query"])["sparse_embedding"]
    return {
        "documents": [[d.sparse_embedding.indices, d.sparse_embedding.values] for d in embedded],
        "query": [query.indices, query.values],
    }


@case("haystack", "async")
def haystack_async(url: str, inputs: Inputs) -> Any:
    from haystack import Document

    from bge_client.haystack import (
        BgeHybridDocumentEmbedder,
        BgeHybridTextEmbedder,
        BgeRanker,
        BgeSparseTextEmbedder,
    )

    async def run() -> Any:
        documents = [Document(content=t) for t in inputs["documents"]]
        embedded = (await BgeHybridDocumentEmbedder(url=url).run_async(documents))["documents"]
        query = await BgeHybridTextEmbedder(url=url).run_async(inputs["query"])
        sparse = (await BgeSparseTextEmbedder(url=url).run_async(inputs["query"]))[
            "sparse_embedding"
        ]
        ranked = await BgeRanker(url=url).run_async(inputs["query"], documents, top_k=3)
        return {
            "dense": [d.embedding for d in embedded],
            "sparse": [[d.sparse_embedding.indices, d.sparse_embedding.values] for d in embedded],
            "dense_query": query["embedding"],
            "sparse_query": [sparse.indices, sparse.values],
            "reranked": [[d.content, d.score] for d in ranked["documents"]],
        }

    return asyncio.run(run())


@case("haystack", "serialised")
def haystack_serialised(url: str, inputs: Inputs) -> Any:
    from bge_client import SparseSpace
    from bge_client.haystack import BgeSparseTextEmbedder

    embedder = BgeSparseTextEmbedder(url=url, sparse_space=SparseSpace("hash", 1_048_576))
    again = BgeSparseTextEmbedder.from_dict(embedder.to_dict())
    return {"dict": embedder.to_dict(), "same": again.to_dict() == embedder.to_dict()}


@case("haystack", "mismatch")
def haystack_mismatch(url: str, inputs: Inputs) -> Any:
    from bge_client import SparseSpace
    from bge_client.haystack import BgeSparseTextEmbedder

    embedder = BgeSparseTextEmbedder(url=url, sparse_space=SparseSpace("hash", 4096))
    return mismatch(lambda: embedder.run("x"))


if __name__ == "__main__":
    CASES.main()
