"""The flag backend's model work against FlagEmbedding's own, same folder, same run.

    .venv-infinity/bin/python -m bench.flag_vs_flagembedding [--texts 512] [--hidden 384 --layers 6]

In-process, no HTTP: what the backend adds or saves over ``BGEM3FlagModel.encode``
and ``FlagReranker.compute_score``. Random-weight XLM-RoBERTa models (no BGE
weights can be downloaded here); speed does not depend on the weights' values.
Writes bench/results/flag_vs_flagembedding.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from backends.flag.m3 import M3Encoder
from backends.flag.reranker import CrossEncoder
from engine.types import Output
from tests.fixtures.tiny_models import build_m3, build_reranker, corpus


def best_rate(work: Callable[[], object], items: int, repeats: int) -> tuple[float, float]:
    """Items per second: the median and the best of ``repeats`` timed runs after a warm-up."""
    work()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates), max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/flag_vs_flagembedding.json")
    )
    args = parser.parse_args()

    from FlagEmbedding import BGEM3FlagModel, FlagReranker

    shape = {
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "num_attention_heads": max(args.hidden // 64, 1),
        "intermediate_size": args.hidden * 4,
    }
    texts = corpus(args.texts, seed=21)
    documents = corpus(args.documents, seed=22)
    query = "where is the cat in paris"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        m3_dir = build_m3(Path(tmp) / "m3", **shape)
        rr_dir = build_reranker(Path(tmp) / "rr", **shape)
        ours = M3Encoder(
            "m3",
            m3_dir,
            device="cpu",
            dtype=torch.float32,
            max_input_tokens=512,
            max_batch_tokens=16_384,
            max_batch_items=256,
            need_sparse_heads=True,
        )
        theirs = BGEM3FlagModel(str(m3_dir), use_fp16=False, devices="cpu")
        for label, outputs in (
            ("dense", frozenset({Output.DENSE})),
            ("dense+sparse", frozenset({Output.DENSE, Output.LEXICAL})),
            ("dense+sparse+colbert", frozenset(Output)),
        ):
            flags = {
                "return_dense": Output.DENSE in outputs,
                "return_sparse": Output.LEXICAL in outputs,
                "return_colbert_vecs": Output.COLBERT in outputs,
            }
            our_median, _ = best_rate(
                lambda o=outputs: ours.encode(texts, o), len(texts), args.repeats
            )
            their_median, _ = best_rate(
                lambda f=flags: theirs.encode(texts, max_length=512, **f), len(texts), args.repeats
            )
            rows.append((f"encode {label}", our_median, their_median))

        cross = CrossEncoder(
            "rr",
            rr_dir,
            device="cpu",
            dtype=torch.float32,
            max_pair_tokens=512,
            max_batch_tokens=16_384,
            max_batch_items=256,
        )
        reranker = FlagReranker(str(rr_dir), use_fp16=False, devices="cpu")
        pairs = [[query, doc] for doc in documents]
        our_median, _ = best_rate(
            lambda: cross.score(query, documents), len(documents), args.repeats
        )
        their_median, _ = best_rate(
            lambda: reranker.compute_score(pairs), len(documents), args.repeats
        )
        rows.append((f"rerank 1 x {len(documents)}", our_median, their_median))

    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "model": f"random XLM-R hidden {args.hidden}, {args.layers} layers, fp32, cpu",
        "texts": args.texts,
        "rows": [
            {"work": w, "flag_backend_per_s": o, "flagembedding_per_s": t, "ratio": o / t}
            for w, o, t in rows
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{result['model']}; {args.texts} texts of 3-24 words; median of {args.repeats} runs\n")
    print("| work | flag backend (texts/s) | FlagEmbedding (texts/s) | ratio |")
    print("|---|---:|---:|---:|")
    for w, o, t in rows:
        print(f"| {w} | {o:,.0f} | {t:,.0f} | {o / t:.2f}x |")


if __name__ == "__main__":
    main()
