"""bge-index / bge-search / bge-eval with float16 and uint8 vectors, the m3 stage and the
eval's sizes, against a live bge-serve (tiny models) and Qdrant's embedded local mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from qdrant_client import models

from retrieval import evaluate, index, search
from retrieval import store as qd
from retrieval.vector_types import VectorTypes, converted
from tests.conftest import Server
from tests.integration.test_retrieval import N_DOCS, flags, opened, write_corpus


@pytest.fixture
def qdrant(tmp_path: Path) -> Path:
    return tmp_path / "qdrant"


@pytest.fixture
def docs(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path / "corpus.jsonl"
    return path, write_corpus(path, N_DOCS)


def hybrid(server: Server, texts: list[str], encoding: str) -> list[dict[str, Any]]:
    body = {"input": texts, "return_colbert": True, "encoding_format": encoding}
    response = httpx.post(f"{server.url}/v1/hybrid-embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


@pytest.mark.parametrize(
    ("dense", "colbert"), [("float16", "float16"), ("uint8", "uint8"), ("float16", "uint8")]
)
def test_a_collection_of_each_datatype_finds_the_copied_document_first(
    server: Server,
    qdrant: Path,
    docs: tuple[Path, list[dict[str, Any]]],
    capsys: Any,
    dense: str,
    colbert: str,
) -> None:
    path, rows = docs
    types = ["--dense-dtype", dense, "--colbert-dtype", colbert]
    argv = [str(path), "--collection", "docs", "--colbert", *types, "--no-progress"]
    assert index.main([*argv, *flags(server, qdrant)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["dense_dtype"], report["colbert_dtype"]) == (dense, colbert)

    with opened(qdrant) as store:
        params: Any = store.get_collection("docs").config.params.vectors
        assert params["dense"].datatype == models.Datatype(dense)
        assert params["colbert"].datatype == models.Datatype(colbert)
        assert qd.vector_types(store, "docs") == VectorTypes(dense, colbert)  # type: ignore[arg-type]
        (point,) = store.retrieve("docs", ids=[qd.point_id("doc-3")], with_vectors=True)
    # What is stored is the service's answer in that format (uint8: the integers as they are).
    vectors: Any = point.vector
    floats = hybrid(server, [rows[3]["text"]], "float")[0]
    want_dense = converted(floats["dense"], dense)  # type: ignore[arg-type]
    if dense == "uint8":
        assert vectors["dense"] == want_dense
        assert all(float(v).is_integer() and 1 <= v <= 255 for v in vectors["dense"])
    else:
        # Local mode stores cosine vectors normalised; float16 values are unit already.
        assert vectors["dense"] == pytest.approx(want_dense, abs=2e-3)
    served = hybrid(server, [rows[3]["text"]], colbert)[0]["colbert"]
    if colbert == "uint8":
        # Converted here when the two sides differ: the service's own integers all the same.
        assert vectors["colbert"] == served
        assert [converted(r, "uint8") for r in floats["colbert"]] == served

    query = rows[7]["text"]
    argv = [query, "--collection", "docs", "--stage", "colbert", "--limit", str(N_DOCS)]
    assert search.main([*argv, *flags(server, qdrant)]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == N_DOCS
    for stage in ("dense", "colbert"):
        assert max(hits, key=lambda h: h["scores"][stage])["id"] == "doc-7", stage
    assert hits[0]["id"] == "doc-7"
    assert next(h for h in hits if h["id"] == "doc-7")["scores"]["dense"] > 0.999


def test_an_existing_collection_is_indexed_with_its_own_datatypes(
    server: Server, qdrant: Path, docs: tuple[Path, list[dict[str, Any]]], capsys: Any
) -> None:
    path, _ = docs
    base = [str(path), "--collection", "docs", "--colbert", "--no-progress", *flags(server, qdrant)]
    assert index.main([*base, "--dense-dtype", "float16", "--colbert-max-tokens", "4"]) == 0
    capsys.readouterr()
    # No datatype flags: what the collection records.
    assert index.main([*base, "--resume"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["dense_dtype"], report["colbert_max_tokens"]) == ("float16", 4)
    assert report["skipped"] == N_DOCS
    assert index.main([*base, "--dense-dtype", "uint8"]) == 1
    error = capsys.readouterr().err
    assert "collection `docs` holds float16 dense vectors, not uint8" in error
    with opened(qdrant) as store:
        points, _ = store.scroll("docs", limit=N_DOCS, with_vectors=True)
    assert all(len(p.vector["colbert"]) <= 4 for p in points)  # type: ignore[index]
    assert max(len(p.vector["colbert"]) for p in points) == 4  # type: ignore[index]


def test_the_m3_stage_orders_by_the_services_m3_score(
    server: Server, qdrant: Path, docs: tuple[Path, list[dict[str, Any]]], capsys: Any
) -> None:
    path, rows = docs
    argv = [str(path), "--collection", "docs", "--no-progress", *flags(server, qdrant)]
    assert index.main(argv) == 0
    capsys.readouterr()
    query = rows[5]["text"]
    argv = [query, "--collection", "docs", "--stage", "m3", "--rerank-top", "12", "--limit", "12"]
    assert search.main([*argv, *flags(server, qdrant)]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 12
    assert all(set(h["scores"]) == {"dense", "sparse", "rrf", "m3"} for h in hits)
    assert [h["score"] for h in hits] == [h["scores"]["m3"] for h in hits]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # The scores are the route's own colbert+sparse+dense for the same texts (within what
    # another batch's composition changes in float32).
    texts = [h["text"] for h in hits]
    body = {"query": query, "documents": texts}
    answer = httpx.post(f"{server.url}/v1/m3-score", json=body, timeout=60).json()
    want = [r["colbert+sparse+dense"] for r in answer["results"]]
    assert [h["score"] for h in hits] == pytest.approx(want, rel=1e-4)
    # Its own text is a candidate (the random sparse head's lexical scores, unbounded,
    # decide the order here, not quality).
    assert "doc-5" in [h["id"] for h in hits]


def test_eval_has_a_hybrid_m3_row_and_each_modes_size(
    server: Server, qdrant: Path, tmp_path: Path, capsys: Any
) -> None:
    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    rows = write_corpus(folder / "corpus.jsonl", N_DOCS, seed=13)
    queries = [{"_id": f"q{i}", "text": rows[i]["text"]} for i in range(0, N_DOCS, 4)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\tdoc-{i}\t1\n" for i in range(0, N_DOCS, 4)
    )
    (folder / "qrels" / "test.tsv").write_text(qrels)
    types = ["--dense-dtype", "float16", "--colbert-dtype", "uint8"]
    assert evaluate.main([str(folder), "--no-progress", *types, *flags(server, qdrant)]) == 0
    table = capsys.readouterr().out
    assert "| mode | nDCG@10 | MRR@10 | Recall@100 | bytes/doc |" in table
    for mode in ("dense", "sparse", "hybrid", "hybrid+colbert", "hybrid+m3", "hybrid+rerank"):
        assert f"| {mode} |" in table
    results = json.loads((folder / "eval.json").read_text())
    assert 0.0 < results["results"]["hybrid+m3"]["nDCG@10"] <= 1.0
    assert results["results"]["hybrid+m3"]["Recall@100"] == 1.0
    assert (results["dense_dtype"], results["colbert_dtype"]) == ("float16", "uint8")
    sizes = results["bytes_per_document"]
    served = hybrid(server, [r["text"] for r in rows], "float")
    dimension = len(served[0]["dense"])
    assert sizes["dense"] == 2 * dimension  # float16
    sparse = np.mean([8 * len(s["sparse"]["indices"]) for s in served])
    assert sizes["sparse"] == pytest.approx(sparse, abs=0.1)
    assert sizes["hybrid"] == pytest.approx(sizes["dense"] + sizes["sparse"], abs=0.1)
    colbert = np.mean([len(s["colbert"]) * len(s["colbert"][0]) for s in served])  # uint8
    assert sizes["hybrid+colbert"] == pytest.approx(sizes["hybrid"] + colbert, abs=0.2)
    assert sizes["hybrid+m3"] == sizes["hybrid+rerank"] == sizes["hybrid"]
