"""The retrieval tools' parts, each against a value worked out by hand: reciprocal-rank
fusion (ours and Qdrant's), the metrics, the corpus readers, the vector datatypes and
what a collection's vectors weigh."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from qdrant_client import QdrantClient, models

from retrieval import store as qd
from retrieval.corpus import read_corpus
from retrieval.evaluate import Pipeline, evaluate_run
from retrieval.search import RRF_K, rrf
from retrieval.vector_types import VectorTypes, converted

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
    assert Pipeline.parse("hybrid+m3") == Pipeline(
        "hybrid+m3", "hybrid", colbert=False, rerank=False, m3=True
    )
    with pytest.raises(ValueError, match="unknown mode `bm25`"):
        Pipeline.parse("bm25")
    with pytest.raises(ValueError, match="unknown mode `hybrid\\+bm25`"):
        Pipeline.parse("hybrid+bm25")


def test_vectors_converted_as_the_service_writes_them() -> None:
    # scale = 0.5 / 127: 0.5 -> 127, -0.25 -> -63.5 -> -64 (half to even), 0.001 -> 0.254 -> 0
    assert converted([0.5, -0.25, 0.001], "uint8") == [255.0, 64.0, 128.0]
    assert converted([0.0, 0.0], "uint8") == [128.0, 128.0]  # a zero vector stays zero
    assert converted([0.1, 1 / 3], "float16") == [0.0999755859375, 0.333251953125]
    assert converted([0.1], "float32") == [0.1]


def test_vector_types_round_trip_through_metadata() -> None:
    types = VectorTypes("float16", "uint8", 32)
    assert VectorTypes.from_metadata(types.metadata()) == types
    assert VectorTypes.from_metadata({"sparse_mapping": "tokenizer"}) is None  # not recorded
    assert VectorTypes().differs(types, colbert=False) == "holds float32 dense vectors, not float16"
    assert VectorTypes("float16").differs(types, colbert=False) is None  # ColBERT not asked
    assert VectorTypes("float16", "uint8").differs(types, colbert=True) == (
        "holds ColBERT rows pruned to no limit, not 32"
    )


def test_vector_bytes_per_document_follow_the_recorded_datatypes() -> None:
    store = QdrantClient(":memory:")
    qd.ensure_collection(
        store,
        "c",
        dimension=4,
        sparse=True,
        colbert_dimension=2,
        types=VectorTypes("float16", "uint8"),
    )
    store.upsert(
        "c",
        points=[
            models.PointStruct(
                id=i,
                vector={
                    "dense": [1.0, 2.0, 3.0, 4.0],
                    "sparse": models.SparseVector(
                        indices=list(range(i + 1)), values=[1.0] * (i + 1)
                    ),
                    "colbert": [[1.0, 2.0]] * (i + 1),
                },
            )
            for i in range(2)
        ],
        wait=True,
    )
    # dense 4 x 2 bytes; sparse (1 + 2) / 2 entries x 8; ColBERT (1 + 2) / 2 rows x 2 x 1.
    assert qd.vector_bytes(store, "c") == {"dense": 8.0, "sparse": 12.0, "colbert": 3.0}
    hybrid = Pipeline.parse("hybrid+colbert+m3")
    assert hybrid.stored(qd.vector_bytes(store, "c")) == 8.0 + 12.0 + 3.0
    assert Pipeline.parse("sparse+rerank").stored({"dense": 8.0, "sparse": 12.0}) == 12.0


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
