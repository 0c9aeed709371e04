"""Every dialect through the clients that speak it, against one live service.

TEI's ``tei-client``, ``huggingface_hub``'s ``InferenceClient``, LangChain's
``OpenAIEmbeddings``, Infinity's wire format (its client cannot be installed beside
httpx 0.28, so its bodies are sent by hand and checked against Infinity's OpenAPI
document), and the openai and cohere SDKs: each answer must equal FlagEmbedding's.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import cohere
import httpx
import httpx2
import numpy as np
import openai
import pytest
import tiktoken
from huggingface_hub import InferenceClient, set_client_factory
from huggingface_hub.utils._http import default_client_factory
from langchain_openai import OpenAIEmbeddings
from numpy.typing import NDArray
from tei_client import HttpClient, ModelType

from tests.conftest import ModelDirs, Server
from tests.contract import post_checked, validate_response
from tests.reference import M3Reference, m3_reference, rerank_reference
from tests.texts import DOCUMENTS, QUERY, TEXTS

EMBEDDER = "BAAI/bge-m3"
RERANKER = "BAAI/bge-reranker-v2-m3"
EMBED_TEXTS = TEXTS[:6]  # one of them is longer than the model's 512 tokens
UNNAMED = "default/not-specified"  # what Infinity's client sends when no model is named


@pytest.fixture(scope="module")
def reference(models: ModelDirs) -> M3Reference:
    return m3_reference(models.m3, EMBED_TEXTS)


@pytest.fixture(scope="module")
def logits(models: ModelDirs) -> NDArray[np.float64]:
    return np.array(rerank_reference(models.reranker, QUERY, DOCUMENTS))


def sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(1 / (1 + np.exp(-x)))


def assert_ranked(
    indices: list[int], scores: list[float], logits: NDArray[np.float64], *, raw: bool = False
) -> None:
    """Best first, as FlagReranker ranks; the sigmoid of its logit, or the logit itself."""
    assert indices == np.argsort(-logits, kind="stable")[: len(indices)].tolist()
    expected = logits[indices] if raw else sigmoid(logits)[indices]
    np.testing.assert_allclose(scores, expected, atol=1e-4 if raw else 1e-5)


# --- TEI: tei-client ---------------------------------------------------------------------


@pytest.fixture
def tei(server: Server) -> Iterator[HttpClient]:
    client = HttpClient(server.url, timeout=60)
    yield client
    client.client.close()


@pytest.fixture
def tei_reranker(server: Server) -> Iterator[HttpClient]:
    # tei-client checks /info's model type before it reranks, as TEI serves one model per
    # port; the service's /reranker/info answers as a reranker container does.
    client = HttpClient(f"{server.url}/reranker", timeout=60)
    yield client
    client.client.close()


def test_tei_client_embed(tei: HttpClient, reference: M3Reference) -> None:
    # tei-client always sends a truncate flag (false by default, as TEI's own default).
    rows = tei.embed(EMBED_TEXTS, truncate=True)
    np.testing.assert_allclose(np.array(rows), reference.dense, atol=2e-5)
    assert tei.info().server_model_id == EMBEDDER
    assert tei.model_type is ModelType.Embedding


def test_tei_client_rerank(tei_reranker: HttpClient, logits: NDArray[np.float64]) -> None:
    assert tei_reranker.model_type is ModelType.Reranker
    assert tei_reranker.info().server_model_id == RERANKER
    ranks = tei_reranker.rerank(QUERY, DOCUMENTS).ranks
    assert_ranked([r.index for r in ranks], [r.score for r in ranks], logits)
    raw = tei_reranker.rerank(QUERY, DOCUMENTS, raw_scores=True, return_text=True).ranks
    assert_ranked([r.index for r in raw], [r.score for r in raw], logits, raw=True)
    assert [r.text for r in raw] == [DOCUMENTS[r.index] for r in raw]


def test_tei_client_async(
    tei: HttpClient,
    tei_reranker: HttpClient,
    reference: M3Reference,
    logits: NDArray[np.float64],
) -> None:
    async def both() -> tuple[list[list[float]], Any]:
        try:
            rows = await tei.async_embed(EMBED_TEXTS, truncate=True)
            return rows, await tei_reranker.async_rerank(QUERY, DOCUMENTS)
        finally:
            await tei.async_client.aclose()
            await tei_reranker.async_client.aclose()

    rows, ranking = asyncio.run(both())
    np.testing.assert_allclose(np.array(rows), reference.dense, atol=2e-5)
    assert_ranked([r.index for r in ranking.ranks], [r.score for r in ranking.ranks], logits)


# --- TEI: huggingface_hub ------------------------------------------------------------------


@pytest.fixture
def hub_reaches_only(server: Server) -> Iterator[None]:
    """huggingface_hub's sessions reach the live server and nothing else.

    With HF_HUB_OFFLINE=1 in the environment when huggingface_hub is imported, its
    default sessions refuse every URL, localhost included (huggingface_hub 1+: an httpx
    client whose request hook checks offline mode).
    """

    def only_the_server(request: httpx2.Request) -> None:
        if not str(request.url).startswith(server.url):
            raise AssertionError(f"huggingface_hub tried to reach {request.url}")

    set_client_factory(lambda: httpx2.Client(event_hooks={"request": [only_the_server]}))
    yield
    set_client_factory(default_client_factory)


@pytest.mark.usefixtures("hub_reaches_only")
def test_huggingface_hub_feature_extraction(server: Server, reference: M3Reference) -> None:
    # A URL as the model: InferenceClient posts {"inputs": text} to the URL itself, POST /.
    client = InferenceClient(model=server.url, token="unused", timeout=60)
    rows = np.concatenate([client.feature_extraction(text) for text in EMBED_TEXTS])
    np.testing.assert_allclose(rows, reference.dense, atol=2e-5)


# --- OpenAI: LangChain ---------------------------------------------------------------------


def test_langchain_openai_embeddings(
    server: Server, reference: M3Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_tiktoken(*_: object, **__: object) -> None:
        raise AssertionError("tiktoken was used (it downloads its encodings)")

    monkeypatch.setattr(tiktoken, "get_encoding", no_tiktoken)
    monkeypatch.setattr(tiktoken, "encoding_for_model", no_tiktoken)
    embeddings = OpenAIEmbeddings(
        model=EMBEDDER,
        base_url=f"{server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,  # else it sends tiktoken ids, not this model's
        max_retries=0,
    )
    documents = embeddings.embed_documents(EMBED_TEXTS)
    np.testing.assert_allclose(np.array(documents), reference.dense, atol=2e-5)
    query = embeddings.embed_query(EMBED_TEXTS[1])
    np.testing.assert_allclose(np.array(query), reference.dense[1], atol=2e-5)


# --- Infinity: infinity-client's bodies by hand --------------------------------------------


def post_infinity(client: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    return post_checked(client, "infinity", path, body)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_infinity_embeddings(
    client: httpx.Client, reference: M3Reference, encoding_format: str
) -> None:
    body = {
        "input": EMBED_TEXTS,
        "model": UNNAMED,
        "encoding_format": encoding_format,
        "dimensions": 0,  # Infinity's "all of them"
        "modality": "text",
    }
    answer = post_infinity(client, "/embeddings", body)
    rows = [item["embedding"] for item in answer["data"]]
    if encoding_format == "base64":
        rows = [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows]
    assert [item["index"] for item in answer["data"]] == list(range(len(EMBED_TEXTS)))
    np.testing.assert_allclose(np.array(rows), reference.dense, atol=2e-5)
    assert answer["model"] == EMBEDDER


def test_infinity_rerank(client: httpx.Client, logits: NDArray[np.float64]) -> None:
    body = {
        "query": QUERY,
        "documents": DOCUMENTS,
        "return_documents": False,
        "raw_scores": False,
        "model": UNNAMED,
    }
    answer = post_infinity(client, "/rerank", body)
    results = answer["results"]
    assert len(results) == len(DOCUMENTS)
    assert all("document" not in r for r in results)
    assert_ranked([r["index"] for r in results], [r["relevance_score"] for r in results], logits)
    assert answer["object"] == "rerank"
    assert answer["model"] == RERANKER


def test_infinity_rerank_top_n_with_documents(
    client: httpx.Client, logits: NDArray[np.float64]
) -> None:
    body = {
        "query": QUERY,
        "documents": DOCUMENTS,
        "return_documents": True,
        "raw_scores": True,
        "model": "bge-reranker-v2-m3",
        "top_n": 3,
    }
    results = post_infinity(client, "/rerank", body)["results"]
    indices = [r["index"] for r in results]
    assert_ranked(indices, [r["relevance_score"] for r in results], logits, raw=True)
    assert len(results) == 3
    assert [r["document"] for r in results] == [DOCUMENTS[i] for i in indices]


def test_infinity_models(client: httpx.Client) -> None:
    response = client.get("/models")
    assert response.status_code == 200
    answer = response.json()
    validate_response("infinity", "GET", "/models", 200, answer)
    capabilities = {m["id"]: m["capabilities"] for m in answer["data"]}
    assert capabilities == {EMBEDDER: ["embed"], RERANKER: ["rerank"]}


# --- OpenAI and Cohere SDKs: public names --------------------------------------------------


def test_openai_sdk_lists_public_names(server: Server) -> None:
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    ids = {m.id for m in oai.models.list()}
    assert ids == {EMBEDDER, RERANKER}
    assert not any(i.startswith("/") for i in ids)  # never the folder it was loaded from


def test_cohere_v2_rerank_by_short_name(server: Server, logits: NDArray[np.float64]) -> None:
    co = cohere.ClientV2(api_key="unused", base_url=server.url)
    result = co.rerank(
        model="bge-reranker-v2-m3", query=QUERY, documents=DOCUMENTS, max_tokens_per_doc=4096
    )
    assert len(result.results) == len(DOCUMENTS)
    assert_ranked(
        [r.index for r in result.results], [r.relevance_score for r in result.results], logits
    )
