"""bge-index / bge-search / bge-eval against a live bge-serve (tiny models) and Qdrant's
embedded local mode: end to end, the stored vectors equal the service's, a run killed
with SIGKILL resumes to every document exactly once, and an alias moves only once the
new collection is complete."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from qdrant_client import QdrantClient

from retrieval import evaluate, index, search
from retrieval import store as qd
from retrieval.client import ServiceClient, ServiceError
from retrieval.corpus import read_corpus
from tests.conftest import Server, free_port
from tests.fixtures.tiny_models import corpus

N_DOCS = 40


def write_corpus(path: Path, count: int, seed: int = 11) -> list[dict[str, Any]]:
    texts = list(dict.fromkeys(corpus(count * 2, seed=seed)))[:count]
    assert len(texts) == count
    rows = [{"id": f"doc-{i}", "text": text, "source": "tiny"} for i, text in enumerate(texts)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def flags(server: Server, qdrant: Path) -> list[str]:
    return ["--service-url", server.url, "--qdrant-path", str(qdrant)]


@pytest.fixture
def qdrant(tmp_path: Path) -> Path:
    return tmp_path / "qdrant"


@pytest.fixture
def docs(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path / "corpus.jsonl"
    return path, write_corpus(path, N_DOCS)


@contextmanager
def opened(qdrant: Path) -> Iterator[QdrantClient]:
    """The local store, between runs of the tools (one process may hold it at a time)."""
    client = QdrantClient(path=str(qdrant))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def store(qdrant: Path) -> Iterator[QdrantClient]:
    with opened(qdrant) as client:
        yield client


def _doc_ids(store: QdrantClient, collection: str) -> list[str]:
    return [str(p["doc_id"]) for p in qd.scroll_texts(store, collection)]


def test_index_then_search_every_stage(
    server: Server, qdrant: Path, docs: tuple[Path, list[dict[str, Any]]], capsys: Any
) -> None:
    path, rows = docs
    argv = [str(path), "--collection", "docs", "--colbert", "--batch-size", "8"]
    assert index.main([*argv, *flags(server, qdrant), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["documents"], report["embedded"], report["skipped"]) == (N_DOCS, N_DOCS, 0)
    # A second run overwrites the same points: still one per document.
    assert index.main([*argv, *flags(server, qdrant), "--no-progress"]) == 0
    capsys.readouterr()

    query = rows[7]["text"]
    argv = [query, "--collection", "docs", "--colbert", "--rerank", "--limit", str(N_DOCS)]
    assert search.main([*argv, *flags(server, qdrant)]) == 0
    answer = json.loads(capsys.readouterr().out)
    hits = answer["hits"]
    assert answer["query"] == query and len(hits) == N_DOCS
    for hit in hits:
        assert set(hit["scores"]) >= {"rrf", "colbert", "rerank"}
        assert hit["score"] == hit["scores"]["rerank"]
        assert hit["source"] == "tiny" and hit["text"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # The document whose text is the query is the dense and the ColBERT nearest (the
    # random cross-encoder may put it anywhere).
    for stage in ("dense", "colbert"):
        nearest = max(hits, key=lambda h: h["scores"][stage])
        assert nearest["id"] == "doc-7", stage
    assert next(h for h in hits if h["id"] == "doc-7")["scores"]["dense"] > 0.999

    for mode in ("dense", "sparse"):
        argv = [query, "--collection", "docs", "--mode", mode]
        assert search.main([*argv, *flags(server, qdrant)]) == 0
        top = json.loads(capsys.readouterr().out)["hits"][0]
        assert set(top["scores"]) == {mode}
    with opened(qdrant) as store:
        assert sorted(_doc_ids(store, "docs")) == sorted(r["id"] for r in rows)


def test_stored_vectors_equal_the_services(
    server: Server, store: QdrantClient, docs: tuple[Path, list[dict[str, Any]]]
) -> None:
    path, rows = docs

    async def fill() -> None:
        async with ServiceClient(server.url) as service:
            await index.index_documents(
                read_corpus(path), service, store, "docs", colbert=True, progress=False
            )

    asyncio.run(fill())
    texts = [r["text"] for r in rows[:6]]
    sparse = httpx.post(f"{server.url}/v1/sparse-embeddings", json={"input": texts}).json()
    dense = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts}).json()
    colbert = httpx.post(
        f"{server.url}/v1/hybrid-embeddings", json={"input": texts, "return_colbert": True}
    ).json()
    points = store.retrieve(
        "docs", ids=[qd.point_id(r["id"]) for r in rows[:6]], with_vectors=True, with_payload=True
    )
    by_doc = {p.payload["doc_id"]: p for p in points if p.payload}
    for i, row in enumerate(rows[:6]):
        vectors: Any = by_doc[row["id"]].vector
        expected = sparse["data"][i]["sparse"]
        stored = dict(zip(vectors["sparse"].indices, vectors["sparse"].values, strict=True))
        assert sorted(stored) == sorted(expected["indices"])
        for key, value in zip(expected["indices"], expected["values"], strict=True):
            assert stored[key] == pytest.approx(value, rel=2e-5, abs=1e-5)
        # Qdrant stores cosine vectors normalised; the service's are already unit length.
        assert vectors["dense"] == pytest.approx(dense["data"][i]["embedding"], abs=1e-5)
        expected_colbert = colbert["data"][i]["colbert"]
        assert len(vectors["colbert"]) == len(expected_colbert)
        for got, want in zip(vectors["colbert"], expected_colbert, strict=True):
            assert got == pytest.approx(want, abs=1e-5)


def test_a_run_killed_mid_way_resumes_to_every_document_once(
    server: Server, qdrant: Path, tmp_path: Path
) -> None:
    path = tmp_path / "big.jsonl"
    rows = write_corpus(path, 400, seed=12)
    command = [
        sys.executable,
        "-m",
        "retrieval.index",
        str(path),
        "--collection",
        "big",
        "--batch-size",
        "4",
        "--concurrency",
        "2",
        *flags(server, qdrant),
    ]
    killed = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert killed.stderr is not None
    seen = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen += killed.stderr.read(1)
        # tqdm redraws " 10%|█  | 40/400 [..." as it goes: kill once a tenth is stored.
        done = re.findall(r"(\d+)/400 \[", seen)
        if done and int(done[-1]) >= 40:
            break
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    with opened(qdrant) as store:
        stored_before = len(_doc_ids(store, "big"))
    assert 40 <= stored_before < 400, "killed mid-way"

    resumed = subprocess.run(
        [*command, "--resume", "--no-progress"], capture_output=True, text=True, check=True
    )
    report = json.loads(resumed.stdout)
    assert report["skipped"] == stored_before
    assert report["embedded"] == 400 - stored_before
    with opened(qdrant) as store:
        ids = _doc_ids(store, "big")
    assert len(ids) == len(set(ids)) == 400
    assert set(ids) == {r["id"] for r in rows}


def test_a_run_interrupted_by_ctrl_c_says_so_and_resumes_to_every_document_once(
    server: Server, qdrant: Path, tmp_path: Path
) -> None:
    path = tmp_path / "big.jsonl"
    rows = write_corpus(path, 200, seed=14)
    command = [sys.executable, "-m", "retrieval.index", str(path), "--collection", "big"]
    command += ["--batch-size", "4", "--concurrency", "2", *flags(server, qdrant)]
    interrupted = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert interrupted.stderr is not None
    seen = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen += interrupted.stderr.read(1)
        done = re.findall(r"(\d+)/200 \[", seen)
        if done and int(done[-1]) >= 20:
            break
    interrupted.send_signal(signal.SIGINT)
    seen += interrupted.stderr.read()
    assert interrupted.wait(timeout=30) == 130
    # The progress bar's last redraw, then one line.
    assert (
        seen.rstrip()
        .splitlines()[-1]
        .endswith(
            "bge-index: interrupted (the batches stored so far stay: --resume goes on from them)"
        )
    )
    assert "Traceback" not in seen
    with opened(qdrant) as store:
        stored_before = len(_doc_ids(store, "big"))
    assert 20 <= stored_before < 200, "interrupted mid-way"

    resumed = subprocess.run(
        [*command, "--resume", "--no-progress"], capture_output=True, text=True, check=True
    )
    report = json.loads(resumed.stdout)
    assert (report["skipped"], report["embedded"]) == (stored_before, 200 - stored_before)
    with opened(qdrant) as store:
        ids = _doc_ids(store, "big")
    assert len(ids) == len(set(ids)) == 200
    assert set(ids) == {r["id"] for r in rows}


def test_repeated_ids_are_refused_or_one_row_of_each_kept_and_counted(
    server: Server, qdrant: Path, tmp_path: Path, capsys: Any
) -> None:
    # 100 lines, 80 distinct ids: the last 20 rows repeat the first 20 rows' ids with
    # other texts. The integer 5 and the string "5" are one id.
    path = tmp_path / "repeats.jsonl"
    texts = list(dict.fromkeys(corpus(240, seed=15)))[:100]
    rows: list[dict[str, Any]] = [{"id": f"doc-{i % 80}", "text": t} for i, t in enumerate(texts)]
    rows[5]["id"], rows[85]["id"] = 5, "5"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = [str(path), "--collection", "rep", "--no-progress", *flags(server, qdrant)]
    assert index.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        f"bge-index: {path}: 20 of 100 rows repeat an earlier id; the first, `doc-0`, is on "
        "lines 1 and 81."
    )
    with opened(qdrant) as store:
        assert not store.collection_exists("rep")  # nothing sent, nothing stored

    for keep, kept in (("first", rows[:80]), ("last", rows[20:])):
        collection = f"rep_{keep}"
        argv = [str(path), "--collection", collection, "--no-progress", *flags(server, qdrant)]
        assert index.main([*argv, "--on-duplicate", keep]) == 0
        report = json.loads(capsys.readouterr().out)
        assert (report["documents"], report["duplicates_dropped"]) == (80, 20)
        assert (report["embedded"], report["skipped"]) == (80, 0)
        with opened(qdrant) as store:
            assert store.count(collection, exact=True).count == 80
            stored = {str(p["doc_id"]): p["text"] for p in qd.scroll_texts(store, collection)}
        assert stored == {str(row["id"]): row["text"] for row in kept}, keep


def test_the_alias_moves_only_once_the_new_collection_is_complete(
    server: Server,
    qdrant: Path,
    docs: tuple[Path, list[dict[str, Any]]],
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, rows = docs
    base = flags(server, qdrant)
    first = [str(path), "--collection", "docs_v1", "--alias", "docs", "--no-progress", *base]
    assert index.main(first) == 0
    capsys.readouterr()

    calls = 0
    embed = ServiceClient.embed

    async def failing(self: ServiceClient, texts: list[str], **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4:  # the probe, two batches, then the service goes away
            raise ServiceError("/v1/hybrid-embeddings: the service went away")
        return await embed(self, texts, **kw)

    monkeypatch.setattr(ServiceClient, "embed", failing)
    again = ["--from-collection", "docs_v1", "--collection", "docs_v2", "--alias", "docs"]
    again += ["--batch-size", "8", "--concurrency", "1", "--no-progress", *base]
    assert index.main(again) == 1
    with opened(qdrant) as store:
        assert [a.collection_name for a in store.get_aliases().aliases] == ["docs_v1"]
        assert 0 < store.count("docs_v2").count < N_DOCS
    # Searching through the alias still finds the old collection, whole.
    assert search.main([rows[3]["text"], "--collection", "docs", "--limit", "40", *base]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == N_DOCS

    monkeypatch.setattr(ServiceClient, "embed", embed)
    assert index.main([*again, "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["alias_was"] == "docs_v1"
    with opened(qdrant) as store:
        assert [a.collection_name for a in store.get_aliases().aliases] == ["docs_v2"]
        assert sorted(_doc_ids(store, "docs_v2")) == sorted(r["id"] for r in rows)
        assert store.count("docs_v1").count == N_DOCS  # kept until the user drops it


def test_eval_on_a_beir_folder(server: Server, qdrant: Path, tmp_path: Path, capsys: Any) -> None:
    """Mechanics only: tiny random models, queries that are documents' own texts."""
    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    rows = write_corpus(folder / "corpus.jsonl", N_DOCS, seed=13)
    queries = [{"_id": f"q{i}", "text": rows[i]["text"]} for i in range(0, N_DOCS, 4)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\tdoc-{i}\t1\n" for i in range(0, N_DOCS, 4)
    )
    (folder / "qrels" / "test.tsv").write_text(qrels)
    assert evaluate.main([str(folder), "--no-progress", *flags(server, qdrant)]) == 0
    table = capsys.readouterr().out
    for mode in ("dense", "sparse", "hybrid", "hybrid+colbert", "hybrid+rerank"):
        assert f"| {mode} |" in table
    results = json.loads((folder / "eval.json").read_text())
    assert results["queries"] == len(queries) and results["documents"] == N_DOCS
    # A query that is a document's text finds it first by dense vectors.
    assert results["results"]["dense"] == {"nDCG@10": 1.0, "MRR@10": 1.0, "Recall@100": 1.0}
    for values in results["results"].values():
        assert all(0.0 <= v <= 1.0 for v in values.values())
        assert values["Recall@100"] == 1.0  # 40 documents, 100 hits: all retrieved
    assert (folder / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unreachable_service_is_a_one_line_error(
    qdrant: Path, docs: tuple[Path, list[dict[str, Any]]], capsys: Any
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    argv = [str(docs[0]), "--collection", "docs", "--no-progress"]
    assert index.main([*argv, "--service-url", closed, "--qdrant-path", str(qdrant)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"bge-index: cannot reach the service at {closed}")
    assert "Traceback" not in error
