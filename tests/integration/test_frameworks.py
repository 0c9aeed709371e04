"""The RAG frameworks' own clients against one live bge-serve, at their default settings.

LangChain (``langchain-openai``, ``langchain-cohere``, ``langchain-qdrant``), LlamaIndex
(``OpenAILikeEmbedding``, ``TextEmbeddingsInference``, ``CohereRerank``), Haystack (OpenAI
and TEI embedders, TEI ranker, TEI sparse embedders) and LiteLLM (``embedding`` and
``rerank`` through its OpenAI, Hugging Face, Cohere and Infinity providers), each pointed
at the service the way its docs point it at a self-hosted server, and naming the models
as ``/v1/models`` lists them. Every answer must equal the service's own answer
for the same input, asked over plain HTTP.

The frameworks' pins conflict with the service's (``langchain-cohere`` and LlamaIndex's
Cohere reranker need cohere<6 and <7, Haystack's Hugging Face integration
huggingface_hub>=1), so they live in ``.venv-frameworks`` (``make install``, from
``tests/frameworks/requirements.txt``) and run there, one process per framework, in
``tests/frameworks/clients.py``. Any address but the live server's is refused in those
processes, so a client that reaches for a hub fails here as it would offline.

LangChain's ``QdrantVectorStore`` is tested dense only here, with what the frameworks
ship: its hybrid mode takes a ``SparseEmbeddings``, and the only one langchain-qdrant
ships, ``FastEmbedSparse``, runs a local fastembed model. bge-client's components (sparse
and hybrid retrieval in each framework) are tested in ``test_client_frameworks.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha1
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from tests.conftest import Server
from tests.offline_tiktoken import CL100K_URL, bundled_cl100k
from tests.texts import DOCUMENTS, QUERY, TEXTS

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv-frameworks" / "bin" / "python"
RUNNER = ROOT / "tests" / "frameworks" / "clients.py"
FRAMEWORKS = ("langchain", "llama_index", "haystack", "litellm")
EMBEDDER = "BAAI/bge-m3"
RERANKER = "BAAI/bge-reranker-v2-m3"
EMBED_TEXTS = TEXTS[:6]  # one of them is over the model's 512 tokens, one is one letter
RERANK_DOCUMENTS = DOCUMENTS[:6]
# Port 9 (discard) on loopback: connections are refused at once.
NOWHERE = "http://127.0.0.1:9"
RUN_TIMEOUT = 600


@dataclass
class Answers:
    framework: str
    versions: dict[str, str]
    cases: dict[str, dict[str, Any]]

    def value(self, name: str) -> Any:
        """What the case returned; its error, traceback tail included, fails the test."""
        answer = self.cases[name]
        if "error" in answer:
            pytest.fail(f"{name} ({self.versions}): {answer['error']}\n{''.join(answer['trace'])}")
        return answer["value"]


def client_env(tiktoken_cache: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "HF_HUB_OFFLINE"}
    # huggingface_hub's offline mode refuses every URL, the live server's too; the proxy
    # below refuses all but the server instead.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = NOWHERE
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(
        # LangChain's OpenAIEmbeddings counts tokens with tiktoken's cl100k_base, which
        # tiktoken downloads unless its cache holds it (named by the SHA-1 of its URL).
        TIKTOKEN_CACHE_DIR=str(tiktoken_cache),
        # Their import-time network calls (telemetry, LiteLLM's price list) fail anyway;
        # these spare the wait.
        HAYSTACK_TELEMETRY_ENABLED="False",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    return env


def run_cases(
    runner: Path, frameworks: Sequence[str], url: str, inputs: dict[str, Any], root: Path
) -> dict[str, Answers]:
    """``runner``'s cases for each framework, run at once in ``.venv-frameworks``, one
    process each (their imports take seconds), against the server at ``url``, each
    given ``inputs`` on stdin; what each case returned."""
    assert PYTHON.exists(), f"{PYTHON} is missing: `make install` builds it"
    # LangChain's OpenAIEmbeddings and LlamaIndex's default node parser count tokens with
    # tiktoken's cl100k_base, which tiktoken downloads unless its cache holds it (named by
    # the SHA-1 of its URL).
    tiktoken_cache = root / "tiktoken"
    tiktoken_cache.mkdir()
    shutil.copyfile(
        bundled_cl100k(),
        tiktoken_cache / sha1(CL100K_URL.encode(), usedforsecurity=False).hexdigest(),
    )
    (root / "inputs.json").write_text(json.dumps(inputs))
    env = client_env(tiktoken_cache)
    running: dict[str, subprocess.Popen[bytes]] = {}
    for framework in frameworks:
        with (
            (root / "inputs.json").open("rb") as stdin,
            (root / f"{framework}.log").open("wb") as log,
        ):
            running[framework] = subprocess.Popen(
                [str(PYTHON), str(runner), framework, url, str(root / f"{framework}.json")],
                stdin=stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=root,
            )
    answers: dict[str, Answers] = {}
    try:
        for framework, process in running.items():
            code = process.wait(timeout=RUN_TIMEOUT)
            output = (root / f"{framework}.log").read_text(errors="replace")
            assert code == 0, f"{framework}'s cases exited {code}:\n{output[-4000:]}"
            result = json.loads((root / f"{framework}.json").read_text())
            answers[framework] = Answers(framework, result["versions"], result["cases"])
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
    return answers


@pytest.fixture(scope="module")
def frameworks(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Answers]:
    inputs = {
        "texts": EMBED_TEXTS,
        "query": QUERY,
        "documents": RERANK_DOCUMENTS,
        "embedder": EMBEDDER,
        "reranker": RERANKER,
    }
    root = tmp_path_factory.mktemp("frameworks")
    return run_cases(RUNNER, FRAMEWORKS, server.url, inputs, root)


# --- The service's own answers -----------------------------------------------------------


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    response = http.post(path, json=body)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    return response.json()


@dataclass(frozen=True)
class Dense:
    documents: NDArray[np.float64]
    query: NDArray[np.float64]


@pytest.fixture(scope="module")
def dense(http: httpx.Client) -> Dense:
    def rows(texts: list[str]) -> NDArray[np.float64]:
        answer = post(http, "/v1/embeddings", {"model": EMBEDDER, "input": texts})
        return np.array([item["embedding"] for item in answer["data"]])

    return Dense(documents=rows(EMBED_TEXTS), query=rows([QUERY])[0])


@pytest.fixture(scope="module")
def ranking(http: httpx.Client) -> list[tuple[int, float]]:
    """The documents best first, with the sigmoid of the cross-encoder's logit."""
    body = {"model": RERANKER, "query": QUERY, "documents": RERANK_DOCUMENTS}
    results = post(http, "/v1/rerank", body)["results"]
    assert len(results) == len(RERANK_DOCUMENTS)
    return [(item["index"], item["relevance_score"]) for item in results]


def assert_dense(value: dict[str, Any], dense: Dense) -> None:
    np.testing.assert_allclose(np.array(value["documents"]), dense.documents, atol=1e-5)
    np.testing.assert_allclose(np.array(value["query"]), dense.query, atol=1e-5)


def assert_ranked(
    got: list[list[Any]], ranking: list[tuple[int, float]], top: int, *, by_text: bool = False
) -> None:
    """``got`` is the service's ranking cut to ``top``: [index or text, score] pairs."""
    expected = ranking[:top]
    keys = [RERANK_DOCUMENTS[index] if by_text else index for index, _ in expected]
    assert [key for key, _ in got] == keys
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)


def test_models_as_the_clients_name_them(http: httpx.Client) -> None:
    listed = [model["id"] for model in http.get("/v1/models").json()["data"]]
    assert listed == [EMBEDDER, RERANKER]


# --- LangChain ----------------------------------------------------------------------------


def test_langchain_openai_embeddings(frameworks: dict[str, Answers], dense: Dense) -> None:
    # At its defaults it sends tiktoken token ids, which the service decodes to the text.
    value = frameworks["langchain"].value("langchain_openai.OpenAIEmbeddings")
    assert_dense(value, dense)


def test_langchain_cohere_embeddings(frameworks: dict[str, Answers], dense: Dense) -> None:
    assert_dense(frameworks["langchain"].value("langchain_cohere.CohereEmbeddings"), dense)


def test_langchain_cohere_rerank(
    frameworks: dict[str, Answers], ranking: list[tuple[int, float]]
) -> None:
    value = frameworks["langchain"].value("langchain_cohere.CohereRerank")
    assert_ranked(value["ranked"], ranking, top=3)  # CohereRerank's top_n
    assert_ranked(value["compressed"], ranking, top=3, by_text=True)


def test_langchain_qdrant_dense(frameworks: dict[str, Answers], dense: Dense) -> None:
    hits = frameworks["langchain"].value("langchain_qdrant.QdrantVectorStore")
    # Cosine, langchain-qdrant's default distance; the vectors are unit length.
    similarity = dense.documents @ dense.query
    best = np.argsort(-similarity, kind="stable")[:3]
    assert [text for text, _ in hits] == [EMBED_TEXTS[i] for i in best]
    np.testing.assert_allclose([s for _, s in hits], similarity[best], atol=1e-5)


# --- LlamaIndex ---------------------------------------------------------------------------


def test_llama_index_openai_like(frameworks: dict[str, Answers], dense: Dense) -> None:
    assert_dense(frameworks["llama_index"].value("llama_index.OpenAILikeEmbedding"), dense)


def test_llama_index_text_embeddings_inference(
    frameworks: dict[str, Answers], dense: Dense, http: httpx.Client
) -> None:
    value = frameworks["llama_index"].value("llama_index.TextEmbeddingsInference")
    assert_dense(value, dense)
    # What it sends: TEI's /embed with truncate true.
    tei = post(http, "/embed", {"inputs": EMBED_TEXTS, "truncate": True})
    np.testing.assert_allclose(np.array(value["documents"]), np.array(tei), atol=1e-6)


def test_llama_index_cohere_rerank(
    frameworks: dict[str, Answers], ranking: list[tuple[int, float]]
) -> None:
    ranked = frameworks["llama_index"].value("llama_index.CohereRerank")
    assert_ranked(ranked, ranking, top=2, by_text=True)  # CohereRerank's top_n


# --- Haystack -----------------------------------------------------------------------------


def test_haystack_openai_embedders(frameworks: dict[str, Answers], dense: Dense) -> None:
    assert_dense(frameworks["haystack"].value("haystack.OpenAITextEmbedder"), dense)


def test_haystack_tei_embedders(frameworks: dict[str, Answers], http: httpx.Client) -> None:
    # HuggingFaceAPI*Embedder send TEI's normalize: false (and truncate: true) by default:
    # the CLS vectors as the model computes them, not unit length.
    value = frameworks["haystack"].value("haystack.HuggingFaceAPITextEmbedder")
    raw = {"truncate": True, "normalize": False}
    documents = np.array(post(http, "/embed", {"inputs": EMBED_TEXTS, **raw}))
    query = np.array(post(http, "/embed", {"inputs": QUERY, **raw})[0])
    assert not np.allclose(np.linalg.norm(documents, axis=1), 1)
    np.testing.assert_allclose(np.array(value["documents"]), documents, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(value["query"]), query, rtol=1e-5, atol=1e-5)


def test_haystack_tei_ranker(
    frameworks: dict[str, Answers], ranking: list[tuple[int, float]]
) -> None:
    ranked = frameworks["haystack"].value("haystack.HuggingFaceTEIRanker")
    assert_ranked(ranked, ranking, top=len(RERANK_DOCUMENTS), by_text=True)  # top_k is 10


def test_haystack_tei_sparse_embedders(frameworks: dict[str, Answers], http: httpx.Client) -> None:
    value = frameworks["haystack"].value("haystack.HuggingFaceTEISparseTextEmbedder")
    expected = post(http, "/embed_sparse", {"inputs": [*EMBED_TEXTS, QUERY]})
    got = [*value["documents"], value["query"]]
    assert len(got) == len(expected)
    for (indices, values), weights in zip(got, expected, strict=True):
        assert indices == [w["index"] for w in weights]
        # float32 rounding of another batch's padding: ReLU'd weights of a few units.
        np.testing.assert_allclose(values, [w["value"] for w in weights], rtol=1e-5, atol=1e-5)


# --- LiteLLM ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "litellm.embedding openai/",
        "litellm.embedding huggingface/",
        "litellm.embedding cohere/",
        "litellm.embedding infinity/",
    ],
)
def test_litellm_embedding(frameworks: dict[str, Answers], dense: Dense, name: str) -> None:
    rows = frameworks["litellm"].value(name)
    np.testing.assert_allclose(np.array(rows), dense.documents, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["litellm.rerank cohere/", "litellm.rerank huggingface/", "litellm.rerank infinity/"]
)
def test_litellm_rerank(
    frameworks: dict[str, Answers], ranking: list[tuple[int, float]], name: str
) -> None:
    assert_ranked(frameworks["litellm"].value(name), ranking, top=3)  # top_n=3 sent


def test_every_case_is_checked(frameworks: dict[str, Answers]) -> None:
    """A case added to the runner without a test here would pass unseen."""
    checked = {
        "langchain": {
            "langchain_openai.OpenAIEmbeddings",
            "langchain_cohere.CohereEmbeddings",
            "langchain_cohere.CohereRerank",
            "langchain_qdrant.QdrantVectorStore",
        },
        "llama_index": {
            "llama_index.OpenAILikeEmbedding",
            "llama_index.TextEmbeddingsInference",
            "llama_index.CohereRerank",
        },
        "haystack": {
            "haystack.OpenAITextEmbedder",
            "haystack.HuggingFaceAPITextEmbedder",
            "haystack.HuggingFaceTEIRanker",
            "haystack.HuggingFaceTEISparseTextEmbedder",
        },
        "litellm": {
            "litellm.embedding openai/",
            "litellm.embedding huggingface/",
            "litellm.embedding cohere/",
            "litellm.embedding infinity/",
            "litellm.rerank cohere/",
            "litellm.rerank huggingface/",
            "litellm.rerank infinity/",
        },
    }
    assert {name: set(answers.cases) for name, answers in frameworks.items()} == checked
