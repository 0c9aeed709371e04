"""The RAG frameworks' own clients, pointed at a live bge-serve as their docs say to point
them at a self-hosted server, each at its default settings.

    .venv-frameworks/bin/python tests/frameworks/clients.py FRAMEWORK URL OUT < inputs.json

runs every case of FRAMEWORK (langchain, llama_index, haystack, litellm) and writes one
JSON object to the file OUT (not stdout: LiteLLM prints there):
``{"versions": {...}, "cases": {name: {"value": ...} | {"error": "...", "trace": [...]}}}``.
``tests/integration/test_frameworks.py`` compares each value with the service's own answer
for the same input. This runs in the frameworks' environment (their pins conflict with the
service's: cohere<6, huggingface_hub>=1), so it imports nothing of the project's.
"""

from __future__ import annotations

from typing import Any

from harness import Cases, Inputs

# The distributions each framework's cases use, for the report of what was tested.
DISTRIBUTIONS = {
    "langchain": ["langchain-core", "langchain-openai", "langchain-cohere", "langchain-qdrant"],
    "llama_index": [
        "llama-index-core",
        "llama-index-embeddings-openai-like",
        "llama-index-embeddings-text-embeddings-inference",
        "llama-index-postprocessor-cohere-rerank",
    ],
    "haystack": ["haystack-ai", "huggingface-api-haystack"],
    "litellm": ["litellm"],
}
CASES = Cases(DISTRIBUTIONS)
case = CASES.case


# --- LangChain ----------------------------------------------------------------------------


def openai_embeddings(url: str, inputs: Inputs) -> Any:
    from langchain_openai import OpenAIEmbeddings

    # What LangChain's docs show for an OpenAI-compatible server: nothing but these three.
    return OpenAIEmbeddings(model=inputs["embedder"], base_url=f"{url}/v1", api_key="unused")


@case("langchain", "langchain_openai.OpenAIEmbeddings")
def langchain_openai(url: str, inputs: Inputs) -> Any:
    embeddings = openai_embeddings(url, inputs)
    return {
        "documents": embeddings.embed_documents(inputs["texts"]),
        "query": embeddings.embed_query(inputs["query"]),
    }


@case("langchain", "langchain_cohere.CohereEmbeddings")
def langchain_cohere_embeddings(url: str, inputs: Inputs) -> Any:
    from langchain_cohere import CohereEmbeddings

    embeddings = CohereEmbeddings(
        model=inputs["embedder"],
        base_url=url,
        cohere_api_key="unused",
    )
    return {
        "documents": embeddings.embed_documents(inputs["texts"]),
        "query": embeddings.embed_query(inputs["query"]),
    }


@case("langchain", "langchain_cohere.CohereRerank")
def langchain_cohere_rerank(url: str, inputs: Inputs) -> Any:
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(
        model=inputs["reranker"],
        base_url=url,
        cohere_api_key="unused",
    )
    ranked = reranker.rerank(inputs["documents"], inputs["query"])
    compressed = reranker.compress_documents(
        [Document(page_content=text) for text in inputs["documents"]], inputs["query"]
    )
    return {
        "ranked": [[item["index"], item["relevance_score"]] for item in ranked],
        "compressed": [[doc.page_content, doc.metadata["relevance_score"]] for doc in compressed],
    }


@case("langchain", "langchain_qdrant.QdrantVectorStore")
def langchain_qdrant_dense(url: str, inputs: Inputs) -> Any:
    from langchain_qdrant import QdrantVectorStore

    store = QdrantVectorStore.from_texts(
        inputs["texts"],
        openai_embeddings(url, inputs),
        location=":memory:",
        collection_name="frameworks",
    )
    hits = store.similarity_search_with_score(inputs["query"], k=3)
    return [[doc.page_content, score] for doc, score in hits]


# --- LlamaIndex ---------------------------------------------------------------------------


@case("llama_index", "llama_index.OpenAILikeEmbedding")
def llama_index_openai_like(url: str, inputs: Inputs) -> Any:
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    embeddings = OpenAILikeEmbedding(
        model_name=inputs["embedder"], api_base=f"{url}/v1", api_key="unused"
    )
    return {
        "documents": embeddings.get_text_embedding_batch(inputs["texts"]),
        "query": embeddings.get_query_embedding(inputs["query"]),
    }


@case("llama_index", "llama_index.TextEmbeddingsInference")
def llama_index_tei(url: str, inputs: Inputs) -> Any:
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    embeddings = TextEmbeddingsInference(model_name=inputs["embedder"], base_url=url)
    return {
        "documents": embeddings.get_text_embedding_batch(inputs["texts"]),
        "query": embeddings.get_query_embedding(inputs["query"]),
    }


@case("llama_index", "llama_index.CohereRerank")
def llama_index_cohere_rerank(url: str, inputs: Inputs) -> Any:
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    reranker = CohereRerank(model=inputs["reranker"], api_key="unused", base_url=url)
    nodes = [NodeWithScore(node=TextNode(text=text)) for text in inputs["documents"]]
    ranked = reranker.postprocess_nodes(nodes, query_str=inputs["query"])
    return [[node.node.get_content(), node.score] for node in ranked]


# --- Haystack -----------------------------------------------------------------------------


@case("haystack", "haystack.OpenAITextEmbedder")
def haystack_openai(url: str, inputs: Inputs) -> Any:
    from haystack import Document
    from haystack.components.embedders import OpenAIDocumentEmbedder, OpenAITextEmbedder
    from haystack.utils import Secret

    key = Secret.from_token("unused")
    text = OpenAITextEmbedder(api_key=key, model=inputs["embedder"], api_base_url=f"{url}/v1")
    documents = OpenAIDocumentEmbedder(
        api_key=key, model=inputs["embedder"], api_base_url=f"{url}/v1"
    )
    embedded = documents.run([Document(content=t) for t in inputs["texts"]])["documents"]
    return {
        "documents": [doc.embedding for doc in embedded],
        "query": text.run(inputs["query"])["embedding"],
    }


@case("haystack", "haystack.HuggingFaceAPITextEmbedder")
def haystack_tei_dense(url: str, inputs: Inputs) -> Any:
    from haystack import Document
    from haystack_integrations.components.embedders.huggingface_api import (
        HuggingFaceAPIDocumentEmbedder,
        HuggingFaceAPITextEmbedder,
    )

    tei = {"api_type": "text_embeddings_inference", "api_params": {"url": url}}
    text = HuggingFaceAPITextEmbedder(**tei)
    documents = HuggingFaceAPIDocumentEmbedder(**tei)
    embedded = documents.run([Document(content=t) for t in inputs["texts"]])["documents"]
    return {
        "documents": [doc.embedding for doc in embedded],
        "query": text.run(inputs["query"])["embedding"],
    }


@case("haystack", "haystack.HuggingFaceTEIRanker")
def haystack_tei_ranker(url: str, inputs: Inputs) -> Any:
    from haystack import Document
    from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker

    ranker = HuggingFaceTEIRanker(url=url)
    documents = [Document(content=text) for text in inputs["documents"]]
    ranked = ranker.run(query=inputs["query"], documents=documents)["documents"]
    return [[doc.content, doc.score] for doc in ranked]


@case("haystack", "haystack.HuggingFaceTEISparseTextEmbedder")
def haystack_tei_sparse(url: str, inputs: Inputs) -> Any:
    from haystack import Document
    from haystack_integrations.components.embedders.huggingface_api import (
        HuggingFaceTEISparseDocumentEmbedder,
        HuggingFaceTEISparseTextEmbedder,
    )

    text = HuggingFaceTEISparseTextEmbedder(api_base_url=url)
    documents = HuggingFaceTEISparseDocumentEmbedder(api_base_url=url)
    embedded = documents.run([Document(content=t) for t in inputs["texts"]])["documents"]
    query = text.run(inputs["query"])["sparse_embedding"]
    return {
        "documents": [
            [doc.sparse_embedding.indices, doc.sparse_embedding.values] for doc in embedded
        ],
        "query": [query.indices, query.values],
    }


# --- LiteLLM ------------------------------------------------------------------------------


def litellm_rows(response: Any) -> list[list[float]]:
    return [row["embedding"] for row in response.data]


def litellm_ranking(response: Any) -> list[list[Any]]:
    return [[row["index"], row["relevance_score"]] for row in response.results]


@case("litellm", "litellm.embedding openai/")
def litellm_openai(url: str, inputs: Inputs) -> Any:
    import litellm

    response = litellm.embedding(
        model=f"openai/{inputs['embedder']}",
        input=inputs["texts"],
        api_base=f"{url}/v1",
        api_key="unused",
    )
    return litellm_rows(response)


@case("litellm", "litellm.embedding huggingface/")
def litellm_huggingface(url: str, inputs: Inputs) -> Any:
    import litellm

    # Without input_type LiteLLM first asks huggingface.co/api/models/<model> for the
    # model's pipeline tag (then for BAAI/bge-m3, "sentence-similarity", a body TEI's
    # embedding routes do not take); a TEI server is reached with the tag given.
    response = litellm.embedding(
        model=f"huggingface/{inputs['embedder']}",
        input=inputs["texts"],
        api_base=url,
        api_key="unused",
        input_type="feature-extraction",
    )
    return litellm_rows(response)


@case("litellm", "litellm.embedding cohere/")
def litellm_cohere(url: str, inputs: Inputs) -> Any:
    import litellm

    # LiteLLM posts a Cohere embedding to api_base as it is: the whole URL of the route.
    response = litellm.embedding(
        model=f"cohere/{inputs['embedder']}",
        input=inputs["texts"],
        api_base=f"{url}/v2/embed",
        api_key="unused",
    )
    return litellm_rows(response)


@case("litellm", "litellm.embedding infinity/")
def litellm_infinity(url: str, inputs: Inputs) -> Any:
    import litellm

    response = litellm.embedding(
        model=f"infinity/{inputs['embedder']}", input=inputs["texts"], api_base=url
    )
    return litellm_rows(response)


def litellm_rerank(url: str, inputs: Inputs, provider: str, **extra: str) -> Any:
    import litellm

    response = litellm.rerank(
        model=f"{provider}/{inputs['reranker']}",
        query=inputs["query"],
        documents=inputs["documents"],
        top_n=3,
        api_base=url,
        **extra,
    )
    return litellm_ranking(response)


@case("litellm", "litellm.rerank cohere/")
def litellm_cohere_rerank(url: str, inputs: Inputs) -> Any:
    return litellm_rerank(url, inputs, "cohere", api_key="unused")


@case("litellm", "litellm.rerank huggingface/")
def litellm_huggingface_rerank(url: str, inputs: Inputs) -> Any:
    return litellm_rerank(url, inputs, "huggingface", api_key="unused")


@case("litellm", "litellm.rerank infinity/")
def litellm_infinity_rerank(url: str, inputs: Inputs) -> Any:
    return litellm_rerank(url, inputs, "infinity")


if __name__ == "__main__":
    CASES.main()
