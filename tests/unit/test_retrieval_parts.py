"""The retrieval tools' parts, each against a value worked out by hand: reciprocal-rank
fusion (ours and Qdrant's), the metrics, the corpus readers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from qdrant_client import QdrantClient, models

from retrieval.corpus import read_corpus
from retrieval.evaluate import Pipeline, evaluate_run
from retrieval.search import RRF_K, rrf

# Dense order a, b, c (d far); sparse order c, a, d (b has no shared term).
DENSE = {"a": [1.0, 0.0], "b": [0.9, 0.43], "c": [0.6, 0.8], "d": [-1.0, 0.0]}
SPARSE = {"a": ([1], [0.5]), "b": ([9], [1.0]), "c": ([1], [0.9]), "d": ([1], [0.1])}
# By hand, k = 60, ranks from 0: a = 1/60 + 1/61, c = 1/62 + 1/60, b = 1/61, d = 1/62.
HAND = {"a": 1 / 60 + 1 / 61, "c": 1 / 62 + 1 / 60, "b": 1 / 61, "d": 1 / 62}


def test_rrf_equals_the_hand_computed_fusion() -> None:
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]])
    assert RRF_K == 60
    assert fused == pytest.approx(HAND)
    assert sorted(fused, key=lambda key: -fused[key])[:2] == ["a", "c"]


def test_qdrants_fusion_of_dense_and_sparse_candidates_equals_it() -> None:
    store = QdrantClient(":memory:")
    store.create_collection(
        "f",
        vectors_config={"dense": models.VectorParams(size=2, distance=models.Distance.COSINE)},
        sparse_vectors_config={"sparse": models.SparseVectorParams()},
    )
    store.upsert(
        "f",
        points=[
            models.PointStruct(
                id=i,
                vector={
                    "dense": DENSE[key],
                    "sparse": models.SparseVector(indices=SPARSE[key][0], values=SPARSE[key][1]),
                },
                payload={"key": key},
            )
            for i, key in enumerate("abcd")
        ],
        wait=True,
    )
    prefetch = [
        models.Prefetch(query=[1.0, 0.0], using="dense", limit=3),
        models.Prefetch(
            query=models.SparseVector(indices=[1], values=[1.0]), using="sparse", limit=3
        ),
    ]
    fused = store.query_points(
        "f",
        prefetch=prefetch,
        query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
        limit=4,
        with_payload=True,
    ).points
    got = {str((p.payload or {})["key"]): p.score for p in fused}
    assert got == pytest.approx(HAND)
    assert [str((p.payload or {})["key"]) for p in fused][:2] == ["a", "c"]


def test_metrics_equal_the_hand_computed_values() -> None:
    qrels = {
        "q1": {"d1": 1, "d2": 1},  # found at ranks 2 and 3
        "q2": {"d5": 2},  # found first
        "q3": {"d9": 1},  # found at rank 11: beyond @10, within @100
    }
    run = {
        "q1": {"d3": 3.0, "d1": 2.0, "d2": 1.0},
        "q2": {"d5": 1.0, "d6": 0.5},
        "q3": {**{f"x{i}": 20.0 - i for i in range(10)}, "d9": 1.0},
    }
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    values = evaluate_run(qrels, run)
    assert values["nDCG@10"] == pytest.approx((ndcg_q1 + 1 + 0) / 3)
    assert values["MRR@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert values["Recall@100"] == pytest.approx(1.0)
    # A judged query the run never answered counts as zero, not as missing.
    assert evaluate_run(qrels, {"q2": run["q2"]})["MRR@10"] == pytest.approx(1 / 3)


def test_pipelines_parse_and_refuse_unknown_stages() -> None:
    assert Pipeline.parse("hybrid+colbert+rerank") == Pipeline(
        "hybrid+colbert+rerank", "hybrid", colbert=True, rerank=True
    )
    with pytest.raises(ValueError, match="unknown mode `bm25`"):
        Pipeline.parse("bm25")


def test_corpus_files_of_every_format(tmp_path: Path) -> None:
    rows = [
        {"_id": "1", "title": "Pandas", "text": "The giant panda is a bear.", "year": 2020},
        {"_id": "2", "title": "", "text": "Paris is in France.", "year": 2021},
    ]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    csv = tmp_path / "c.csv"
    csv.write_text(
        "_id,title,text,year\n"
        "1,Pandas,The giant panda is a bear.,2020\n"
        "2,,Paris is in France.,2021\n"
    )
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (jsonl, csv, parquet):
        documents = list(read_corpus(path))
        assert [d.id for d in documents] == ["1", "2"]
        assert documents[0].text == "Pandas\nThe giant panda is a bear."  # BEIR: title first
        assert documents[1].text == "Paris is in France."
        assert str(documents[0].payload["year"]) == "2020"
        assert "_id" not in documents[0].payload


def test_a_corpus_row_without_id_or_text_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1", "text": "fine"}\n{"text": "no id"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no document id"):
        list(read_corpus(path))
    path.write_text('{"id": "1", "body": "wrong field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: no text in field `text`"):
        list(read_corpus(path))
