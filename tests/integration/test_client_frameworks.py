"""bge-client's LangChain, LlamaIndex and Haystack components in the real frameworks,
at their defaults, against live bge-serve processes.

As ``test_frameworks.py`` does, each framework's cases run in ``.venv-frameworks`` (where
the frameworks and bge-client are installed: ``make install``), one process per
framework, from ``tests/frameworks/bge_client_cases.py``; every value is checked here
against the service's own answer over plain HTTP. Retrieval is checked the way a
person would: the query copies one document verbatim, so with dense, sparse or fused
scores that document is the first hit (Qdrant in memory).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.integration.test_frameworks import Answers, run_cases
from tests.texts import DOCUMENTS

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "frameworks" / "bge_client_cases.py"
FRAMEWORKS = ("langchain", "llama_index", "haystack")
# The long text is left out: the query copies a document whole, within the token limit.
CORPUS = [text for text in DOCUMENTS if len(text) < 2000]
QUERY = CORPUS[5]
API_KEY = "client-frameworks-key"
DIMENSION = 32  # the tiny model's hidden size


@pytest.fixture(scope="module")
def keyed(models: ModelDirs) -> Iterator[Server]:
    live = start_server(models, {"API_KEY": API_KEY})
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def bge_index_collection(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection as ``bge-index`` builds one, in a local Qdrant folder."""
    root = tmp_path_factory.mktemp("bge-index")
    corpus = root / "corpus.jsonl"
    rows = [{"id": f"doc-{i}", "text": text, "lang": "en"} for i, text in enumerate(CORPUS)]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    qdrant = root / "qdrant"
    command = [
        str(ROOT / ".venv" / "bin" / "bge-index"),
        str(corpus),
        "--collection",
        "docs",
        "--qdrant-path",
        str(qdrant),
        "--service-url",
        server.url,
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return qdrant


@pytest.fixture(scope="module")
def frameworks(
    server: Server,
    keyed: Server,
    bge_index_collection: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Answers]:
    inputs = {
        "documents": CORPUS,
        "query": QUERY,
        "dimension": DIMENSION,
        "qdrant_path": str(bge_index_collection),
        "collection": "docs",
        "keyed_url": keyed.url,
        "api_key": API_KEY,
    }
    root = tmp_path_factory.mktemp("client-frameworks")
    return run_cases(RUNNER, FRAMEWORKS, server.url, inputs, root)


# --- The service's own answers -----------------------------------------------------------


def post(server: Server, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    return response.json()


@pytest.fixture(scope="module")
def dense(server: Server) -> dict[str, Any]:
    rows = post(server, "/v1/embeddings", {"input": [*CORPUS, QUERY]})["data"]
    vectors = [row["embedding"] for row in rows]
    return {"documents": np.array(vectors[:-1]), "query": np.array(vectors[-1])}


@pytest.fixture(scope="module")
def sparse(server: Server) -> list[tuple[list[int], list[float]]]:
    rows = post(server, "/v1/sparse-embeddings", {"input": [*CORPUS, QUERY]})["data"]
    return [(row["sparse"]["indices"], row["sparse"]["values"]) for row in rows]


@pytest.fixture(scope="module")
def ranking(server: Server) -> list[tuple[str, float]]:
    results = post(server, "/v1/rerank", {"query": QUERY, "documents": CORPUS})["results"]
    return [(CORPUS[r["index"]], r["relevance_score"]) for r in results]


def assert_sparse(got: list[list[Any]], expected: list[tuple[list[int], list[float]]]) -> None:
    assert len(got) == len(expected)
    for (indices, values), (want_indices, want_values) in zip(got, expected, strict=True):
        assert indices == want_indices
        # float32 rounding of another batch's padding.
        np.testing.assert_allclose(values, want_values, rtol=1e-5, atol=1e-5)


def assert_ranked(got: list[list[Any]], ranking: list[tuple[str, float]], top: int) -> None:
    assert [text for text, _ in got] == [text for text, _ in ranking[:top]]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in ranking[:top]], atol=1e-5)


# --- LangChain ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hybrid", "sparse"])
def test_langchain_qdrant_retrieval(frameworks: dict[str, Answers], mode: str) -> None:
    hits = frameworks["langchain"].value(mode)
    assert len(hits) == 3
    assert hits[0] == QUERY


def test_langchain_async(
    frameworks: dict[str, Answers],
    dense: dict[str, Any],
    sparse: list[tuple[list[int], list[float]]],
    ranking: list[tuple[str, float]],
) -> None:
    value = frameworks["langchain"].value("async")
    np.testing.assert_allclose(np.array(value["dense"]), dense["documents"], atol=1e-5)
    np.testing.assert_allclose(np.array(value["dense_query"]), dense["query"], atol=1e-5)
    assert_sparse([*value["sparse"], value["sparse_query"]], sparse)
    assert_ranked(value["reranked"], ranking, top=3)  # BgeRerank's top_n


def test_langchain_rerank(frameworks: dict[str, Answers], ranking: list[tuple[str, float]]) -> None:
    assert_ranked(frameworks["langchain"].value("rerank"), ranking, top=3)


def test_langchain_bge_index_store(frameworks: dict[str, Answers]) -> None:
    hits = frameworks["langchain"].value("bge_index_store")
    # The text and the corpus row's own fields, as bge-index stored them.
    assert hits[0] == [QUERY, f"doc-{CORPUS.index(QUERY)}"]


def test_langchain_api_key(frameworks: dict[str, Answers], keyed: Server) -> None:
    value = frameworks["langchain"].value("api_key")
    assert len(value["vector"]) == DIMENSION
    assert value["refused"] == 401
    assert "API key is required" in value["message"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sparse_space_mismatch_is_refused(frameworks: dict[str, Answers], framework: str) -> None:
    value = frameworks[framework].value("mismatch")
    assert value["raised"] == "SparseSpaceMismatch"
    assert "no sparse query would match" in value["message"]


# --- LlamaIndex ---------------------------------------------------------------------------


def test_llama_index_hybrid(frameworks: dict[str, Answers]) -> None:
    hits = frameworks["llama_index"].value("hybrid")
    assert len(hits) == 3
    assert hits[0] == QUERY


def test_llama_index_sparse_embedding(
    frameworks: dict[str, Answers], sparse: list[tuple[list[int], list[float]]]
) -> None:
    value = frameworks["llama_index"].value("sparse_embedding")
    assert_sparse([*value["documents"], value["query"]], sparse)
    assert_sparse([value["async_query"]], sparse[-1:])


def test_llama_index_async(
    frameworks: dict[str, Answers], dense: dict[str, Any], ranking: list[tuple[str, float]]
) -> None:
    value = frameworks["llama_index"].value("async")
    np.testing.assert_allclose(np.array(value["dense"]), dense["documents"], atol=1e-5)
    np.testing.assert_allclose(np.array(value["dense_query"]), dense["query"], atol=1e-5)
    assert_ranked(value["reranked"], ranking, top=2)  # BgeRerank's top_n


def test_llama_index_rerank(
    frameworks: dict[str, Answers], ranking: list[tuple[str, float]]
) -> None:
    assert_ranked(frameworks["llama_index"].value("rerank"), ranking, top=2)


# --- Haystack -----------------------------------------------------------------------------


def test_haystack_hybrid(frameworks: dict[str, Answers], server: Server) -> None:
    value = frameworks["haystack"].value("hybrid")
    assert len(value["retrieved"]) == 3
    assert value["retrieved"][0] == QUERY
    # The ranker reorders what the retriever found, by the service's own ranking of them.
    results = post(server, "/v1/rerank", {"query": QUERY, "documents": value["retrieved"]})
    expected = [(value["retrieved"][r["index"]], r["relevance_score"]) for r in results["results"]]
    assert_ranked(value["reranked"], expected, top=3)


def test_haystack_sparse(
    frameworks: dict[str, Answers], sparse: list[tuple[list[int], list[float]]]
) -> None:
    value = frameworks["haystack"].value("sparse")
    assert_sparse([*value["documents"], value["query"]], sparse)


def test_haystack_async(
    frameworks: dict[str, Answers],
    dense: dict[str, Any],
    sparse: list[tuple[list[int], list[float]]],
    ranking: list[tuple[str, float]],
) -> None:
    value = frameworks["haystack"].value("async")
    np.testing.assert_allclose(np.array(value["dense"]), dense["documents"], atol=1e-5)
    np.testing.assert_allclose(np.array(value["dense_query"]), dense["query"], atol=1e-5)
    assert_sparse([*value["sparse"], value["sparse_query"]], sparse)
    assert_ranked(value["reranked"], ranking, top=3)


def test_haystack_serialised(frameworks: dict[str, Answers]) -> None:
    value = frameworks["haystack"].value("serialised")
    assert value["same"]
    assert value["dict"]["init_parameters"]["sparse_space"] == {
        "sparse_mapping": "hash",
        "sparse_index_space": 1_048_576,
    }


def test_every_case_is_checked(frameworks: dict[str, Answers]) -> None:
    """A case added to the runner without a test here would pass unseen."""
    checked = {
        "langchain": {"hybrid", "sparse", "async", "rerank", "bge_index_store", "mismatch"}
        | {"api_key"},
        "llama_index": {"hybrid", "sparse_embedding", "async", "rerank", "mismatch"},
        "haystack": {"hybrid", "sparse", "async", "serialised", "mismatch"},
    }
    assert {name: set(answers.cases) for name, answers in frameworks.items()} == checked
