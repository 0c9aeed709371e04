"""One sparse index space: every route that answers sparse vectors answers them in
SPARSE_TOKEN_MAPPING's space (TEI's /embed_sparse included), /info and /health say
which, bge-index records it in the collection and bge-search refuses another.

Three services: the session's plain server (the default, tokenizer: index = token id),
one with SPARSE_TOKEN_MAPPING=hash, and a front end with its own hash space of 4096 in
front of the plain one (REMOTE_KIND=self: it hashes the token ids the peer sends).
Expected vectors come from FlagEmbedding's own ``lexical_weights``, keyed by token id.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from qdrant_client import QdrantClient, models
from tei_client import HttpClient
from transformers import AutoTokenizer

from engine.sparse_mapping import hashed_index
from retrieval import index, search
from retrieval import store as qd
from retrieval.client import ServiceClient
from retrieval.space import SparseSpace
from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.contract import post_checked, validate
from tests.fixtures.tiny_models import corpus
from tests.reference import m3_reference
from tests.texts import TEXTS

INPUTS = TEXTS[:5]  # non-ASCII text, a one-letter text and one longer than the model takes
SMALL_SPACE = 4096
SPARSE_ROUTES = ("/v1/sparse-embeddings", "/v1/hybrid-embeddings", "/embed_sparse")


@pytest.fixture(scope="module")
def hashed(models: ModelDirs) -> Iterator[Server]:
    live = start_server(models, {"SPARSE_TOKEN_MAPPING": "hash"})
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def hash_front(models: ModelDirs, server: Server) -> Iterator[Server]:
    live = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote",
            "LEXICAL_COLBERT_BACKENDS": "remote",
            "RERANK_BACKENDS": "remote",
            "REMOTE_URL": server.url,
            "SPARSE_TOKEN_MAPPING": "hash",
            "SPARSE_INDEX_SPACE": str(SMALL_SPACE),
        },
    )
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def vocabulary(models: ModelDirs) -> int:
    return len(AutoTokenizer.from_pretrained(models.m3))


@pytest.fixture(scope="module")
def lexical(models: ModelDirs) -> list[dict[str, float]]:
    return m3_reference(models.m3, INPUTS).lexical


def service(request: pytest.FixtureRequest, name: str) -> Server:
    served: Server = request.getfixturevalue(name)
    return served


def space_of(name: str, vocabulary: int) -> SparseSpace:
    return {
        "server": SparseSpace("tokenizer", vocabulary),
        "hashed": SparseSpace("hash", 1_048_576),
        "hash_front": SparseSpace("hash", SMALL_SPACE),
    }[name]


def expected_vector(weights: dict[str, float], space: SparseSpace) -> dict[int, float]:
    """FlagEmbedding's lexical weights in ``space``: colliding hashed indices add."""
    vector: dict[int, float] = {}
    for token_id, weight in weights.items():
        key = int(token_id)
        if space.mapping == "hash":
            key = hashed_index(key, space.index_space)
        vector[key] = vector.get(key, 0.0) + weight
    return vector


def sparse_rows(url: str, route: str, texts: list[str]) -> list[tuple[list[int], list[float]]]:
    """Each text's (indices, values) as ``route`` answers them; native answers also say
    their space, checked by the caller through ``native_spaces``."""
    if route == "/embed_sparse":
        with httpx.Client(base_url=url, timeout=120) as client:
            answer = post_checked(client, "tei", route, {"inputs": texts})
        return [([v["index"] for v in row], [v["value"] for v in row]) for row in answer]
    data = httpx.post(f"{url}{route}", json={"input": texts}, timeout=120).json()["data"]
    return [(row["sparse"]["indices"], row["sparse"]["values"]) for row in data]


def native_spaces(url: str, route: str, texts: list[str], **extra: Any) -> set[SparseSpace]:
    data = httpx.post(f"{url}{route}", json={"input": texts, **extra}, timeout=120).json()["data"]
    return {SparseSpace(row["sparse"]["mapping"], row["sparse"]["index_space"]) for row in data}


@pytest.mark.parametrize("route", SPARSE_ROUTES)
@pytest.mark.parametrize("name", ["server", "hashed", "hash_front"])
def test_every_route_answers_in_the_configured_space(
    request: pytest.FixtureRequest,
    name: str,
    route: str,
    vocabulary: int,
    lexical: list[dict[str, float]],
) -> None:
    url = service(request, name).url
    space = space_of(name, vocabulary)
    rows = sparse_rows(url, route, INPUTS)
    for (indices, values), weights in zip(rows, lexical, strict=True):
        want = expected_vector(weights, space)
        assert indices == sorted(want)
        assert all(0 <= i < space.index_space for i in indices)
        np.testing.assert_allclose(values, [want[i] for i in indices], rtol=1e-5, atol=1e-6)
    if route != "/embed_sparse":
        assert native_spaces(url, route, INPUTS) == {space}


@pytest.mark.parametrize("route", SPARSE_ROUTES[:2])
def test_a_native_request_names_its_own_mapping(
    server: Server, hashed: Server, route: str, vocabulary: int
) -> None:
    def body(url: str, **extra: Any) -> list[dict[str, Any]]:
        answer = httpx.post(f"{url}{route}", json={"input": INPUTS, **extra}, timeout=120)
        return [row["sparse"] for row in answer.json()["data"]]

    # Each server, asked for the other's space, answers what the other answers by default.
    assert body(hashed.url, mapping="tokenizer") == body(server.url)
    assert body(server.url, mapping="hash") == body(hashed.url)
    assert native_spaces(hashed.url, route, INPUTS, mapping="tokenizer") == {
        SparseSpace("tokenizer", vocabulary)
    }


@pytest.mark.parametrize("name", ["server", "hashed", "hash_front"])
def test_info_and_health_say_the_space(
    request: pytest.FixtureRequest, name: str, vocabulary: int
) -> None:
    url = service(request, name).url
    space = space_of(name, vocabulary)
    info = httpx.get(f"{url}/info").json()
    validate("tei", "Info", info)  # TEI's own fields still fit TEI's contract
    health = httpx.get(f"{url}/health").json()
    for said in (info, health):
        assert SparseSpace(said["sparse_mapping"], said["sparse_index_space"]) == space
    # The reranker's /info has no sparse space.
    reranker = httpx.get(f"{url}/reranker/info").json()
    assert reranker["sparse_mapping"] is None and reranker["sparse_index_space"] is None
    # TEI clients decode /info with the extra fields: tei-client's pydantic model ignores
    # unknown keys, huggingface_hub (haystack's TEI components use it) answers a dict.
    assert HttpClient(url).info().server_model_id == info["model_id"]
    assert InferenceClient(model=url, provider="hf-inference").get_endpoint_info() == info


# -- bge-index / bge-search ------------------------------------------------------------


def write_corpus(path: Path, count: int = 24) -> list[dict[str, Any]]:
    texts = list(dict.fromkeys(corpus(count * 2, seed=21)))[:count]
    rows = [{"id": f"doc-{i}", "text": text} for i, text in enumerate(texts)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def connected(url: str, qdrant: Path) -> list[str]:
    return ["--service-url", url, "--qdrant-path", str(qdrant)]


def where(url: str, qdrant: Path) -> list[str]:
    """bge-index's flags for ``url`` and the local store."""
    return [*connected(url, qdrant), "--no-progress"]


def searched(url: str, qdrant: Path, collection: str, mode: str = "hybrid") -> list[str]:
    return ["what is it", "--collection", collection, "--mode", mode, *connected(url, qdrant)]


@contextmanager
def opened(qdrant: Path) -> Iterator[QdrantClient]:
    """The local store, between runs of the tools (one process may hold it at a time)."""
    client = QdrantClient(path=str(qdrant))
    try:
        yield client
    finally:
        client.close()


# What bge-index records of the vectors it stores by default (retrieval/vector_types.py).
FLOAT32_VECTORS = {"dense_dtype": "float32", "colbert_dtype": "float32", "colbert_max_tokens": None}


def metadata(qdrant: Path, collection: str) -> dict[str, Any]:
    with opened(qdrant) as store:
        return dict(store.get_collection(collection).config.metadata or {})


@pytest.fixture
def docs(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path / "corpus.jsonl"
    return path, write_corpus(path)


@pytest.mark.parametrize("name", ["server", "hashed"])
def test_bge_index_records_the_services_space(
    request: pytest.FixtureRequest,
    name: str,
    tmp_path: Path,
    docs: tuple[Path, list[dict[str, Any]]],
    vocabulary: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, qdrant = service(request, name).url, tmp_path / "qdrant"
    argv = [str(docs[0]), "--collection", "docs_v1", "--alias", "docs", *where(url, qdrant)]
    assert index.main(argv) == 0
    space = space_of(name, vocabulary)
    assert metadata(qdrant, "docs_v1") == {
        "sparse_mapping": space.mapping,
        "sparse_index_space": space.index_space,
        **FLOAT32_VECTORS,
    }
    # The same service searches it (through the alias) without a word on stderr.
    capsys.readouterr()
    assert search.main(searched(url, qdrant, "docs")) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["hits"]
    assert captured.err == ""


@pytest.mark.parametrize(
    ("built_by", "searched_by", "fix"),
    [
        ("server", "hashed", "SPARSE_TOKEN_MAPPING=tokenizer on the service"),
        ("hashed", "server", "SPARSE_TOKEN_MAPPING=hash and SPARSE_INDEX_SPACE=1048576"),
        ("hashed", "hash_front", "SPARSE_INDEX_SPACE=1048576 on the service"),
    ],
)
def test_bge_search_refuses_a_collection_built_in_another_space(
    request: pytest.FixtureRequest,
    built_by: str,
    searched_by: str,
    fix: str,
    tmp_path: Path,
    docs: tuple[Path, list[dict[str, Any]]],
    vocabulary: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    qdrant = tmp_path / "qdrant"
    builder, searcher = service(request, built_by).url, service(request, searched_by).url
    argv = [str(docs[0]), "--collection", "docs_v1", "--alias", "docs"]
    assert index.main([*argv, *where(builder, qdrant)]) == 0
    capsys.readouterr()
    stored, served = space_of(built_by, vocabulary), space_of(searched_by, vocabulary)
    for mode in ("hybrid", "sparse"):
        assert search.main(searched(searcher, qdrant, "docs", mode)) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        error = captured.err
        assert error.startswith("bge-search: collection `docs` holds sparse vectors in the ")
        assert f"in the {stored} space but the service answers in the {served} space" in error
        assert f"Set {fix}" in error
        assert "re-index the collection with this service" in error
        assert "Traceback" not in error
    # Dense vectors do not depend on the sparse space: a dense search still answers.
    assert search.main(searched(searcher, qdrant, "docs", "dense")) == 0
    assert json.loads(capsys.readouterr().out)["hits"]
    # Nor does bge-index add vectors of another space to the collection.
    assert index.main([*argv, "--resume", *where(searcher, qdrant)]) == 1
    assert (
        f"in the {stored} space but the service answers in the {served}" in capsys.readouterr().err
    )
    assert SparseSpace.from_metadata(metadata(qdrant, "docs_v1")) == stored


def test_a_collection_with_no_record_is_searched_with_a_warning(
    server: Server,
    tmp_path: Path,
    docs: tuple[Path, list[dict[str, Any]]],
    vocabulary: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As bge-index left collections before it recorded the space."""
    qdrant = tmp_path / "qdrant"
    rows = docs[1]

    async def embed(texts: list[str]) -> Any:
        async with ServiceClient(server.url) as client:
            return await client.embed(texts)

    vectors = asyncio.run(embed([r["text"] for r in rows]))
    with opened(qdrant) as store:
        # Created as bge-index created collections then: float32 vectors, no metadata.
        store.create_collection(
            "old",
            vectors_config={
                qd.DENSE: models.VectorParams(
                    size=len(vectors[0].dense), distance=models.Distance.COSINE
                )
            },
            sparse_vectors_config={qd.SPARSE: models.SparseVectorParams()},
        )
        ids, texts = [r["id"] for r in rows], [r["text"] for r in rows]
        qd.upsert(store, "old", ids, texts, [{} for _ in rows], vectors)
    assert metadata(qdrant, "old") == {}
    assert search.main(searched(server.url, qdrant, "old")) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["hits"]
    warning = captured.err
    assert warning.startswith("warning: collection `old` records no sparse index space")
    assert f"assuming it is the service's, tokenizer (index space {vocabulary})" in warning
    assert "set SPARSE_TOKEN_MAPPING=hash on the service or re-index" in warning
    # bge-index adds to it with the same warning, and records nothing it does not know.
    assert index.main([str(docs[0]), "--collection", "old", *where(server.url, qdrant)]) == 0
    assert "records no sparse index space" in capsys.readouterr().err
    assert metadata(qdrant, "old") == {}


def test_a_tei_sparse_query_matches_a_bge_index_collection(
    server: Server,
    hashed: Server,
    tmp_path: Path,
    docs: tuple[Path, list[dict[str, Any]]],
) -> None:
    """What haystack's or any TEI client's sparse embedder sends: /embed_sparse, no mapping."""
    qdrant = tmp_path / "qdrant"
    path, rows = docs
    assert index.main([str(path), "--collection", "docs", *where(server.url, qdrant)]) == 0
    target = rows[5]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        (row,) = post_checked(client, "tei", "/embed_sparse", {"inputs": [target["text"]]})
    query = models.SparseVector(indices=[v["index"] for v in row], values=[v["value"] for v in row])
    with opened(qdrant) as store:
        (point,) = store.retrieve("docs", ids=[qd.point_id(target["id"])], with_vectors=[qd.SPARSE])
        stored: Any = point.vector
        # The stored vector is the TEI answer: same indices, same weights (within the
        # float noise of a text embedded in a batch of others or alone).
        assert stored[qd.SPARSE].indices == query.indices
        np.testing.assert_allclose(stored[qd.SPARSE].values, query.values, atol=1e-5)
        hits = store.query_points("docs", query=query, using=qd.SPARSE, limit=len(rows)).points
        scores = {p.id: p.score for p in hits}
        self_dot = float(np.dot(query.values, query.values))
        assert scores[qd.point_id(target["id"])] == pytest.approx(self_dot, rel=1e-5)
        # The same query from a service left on the hash mapping finds nothing of it.
        with httpx.Client(base_url=hashed.url, timeout=60) as client:
            (other,) = post_checked(client, "tei", "/embed_sparse", {"inputs": [target["text"]]})
        hashed_query = models.SparseVector(
            indices=[v["index"] for v in other], values=[v["value"] for v in other]
        )
        misses = store.query_points("docs", query=hashed_query, using=qd.SPARSE, limit=5).points
        assert all(p.score < self_dot / 10 for p in misses)
