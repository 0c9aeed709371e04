"""Hybrid + ColBERT answers as JSON numbers against base64 float32: bytes and latency.

    .venv/bin/python -m bench.vector_encoding [--rounds 3] [--requests 10]

One ``bge-serve`` with a random-weight bge-m3-shaped model of bge-m3's width
(1024, so each ColBERT row is as large as the real model's) but two layers, so
the forward pass is cheap and what differs is writing, sending and reading the
answer. One httpx client asks ``/v1/hybrid-embeddings`` with ``return_colbert``
for 1, 8 and 32 passages of 8-24 words (~90 tokens with the model's tokenizer),
``--requests`` times one after another, first with ``"encoding_format": "float"``,
then ``"base64"``. A request's
time includes what a client must do to hold the vectors: parse the JSON and make
float32 arrays of the dense and ColBERT rows. Each row is the median round.
Results: bench/results/vector_encoding.json, and the table of docs/benchmarks.md printed.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.load import free_port, sentences
from bench.report import write_results

RESULTS = Path(__file__).parent / "results" / "vector_encoding.json"
ENV = {
    "DEVICE": "cpu",
    "HOST": "127.0.0.1",
    "LOG_LEVEL": "warning",
    "CACHE_MAX_ITEMS": "0",  # every request computes
    "HF_HUB_OFFLINE": "1",
}
BATCHES = (1, 8, 32)
FORMATS = ("float", "base64")


@dataclass
class Row:
    texts: int
    encoding: str
    bytes_per_answer: int
    colbert_rows: int
    p50_ms: float
    p99_ms: float


def held(answer: dict[str, Any], encoding: str) -> int:
    """Make the float32 arrays a client works with; the ColBERT rows made."""
    rows = 0
    for item in answer["data"]:
        if encoding == "base64":
            np.frombuffer(base64.b64decode(item["dense"]), dtype="<f4")
            colbert = np.stack(
                [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in item["colbert"]]
            )
        else:
            np.asarray(item["dense"], dtype=np.float32)
            colbert = np.asarray(item["colbert"], dtype=np.float32)
        rows += colbert.shape[0]
    return rows


def measure(http: httpx.Client, texts: list[str], encoding: str, count: int) -> Row:
    body = {"input": texts, "return_colbert": True, "encoding_format": encoding}
    seconds = []
    size = rows = 0
    for _ in range(count):
        began = time.perf_counter()
        response = http.post("/v1/hybrid-embeddings", json=body)
        if response.status_code != 200:
            raise RuntimeError(response.text)
        rows = held(response.json(), encoding)
        seconds.append(time.perf_counter() - began)
        size = len(response.content)
    seconds.sort()
    return Row(
        texts=len(texts),
        encoding=encoding,
        bytes_per_answer=size,
        colbert_rows=rows,
        p50_ms=seconds[len(seconds) // 2] * 1000,
        p99_ms=seconds[int(len(seconds) * 0.99)] * 1000,
    )


def one_round(url: str, requests: int) -> list[Row]:
    rows = []
    with httpx.Client(base_url=url, timeout=300) as http:
        for size in BATCHES:
            texts = sentences(size, seed=7)
            measure(http, texts, "float", 2)  # warm the shapes
            for encoding in FORMATS:
                rows.append(measure(http, texts, encoding, requests))
    return rows


def median_rows(rounds: list[list[Row]]) -> list[Row]:
    merged = []
    for same in zip(*rounds, strict=True):
        median = sorted(same, key=lambda row: row.p50_ms)[len(same) // 2]
        merged.append(median)
    return merged


def table(rows: list[Row]) -> str:
    lines = [
        "| passages | ColBERT rows | float: bytes | base64: bytes | float p50 (p99) "
        "| base64 p50 (p99) | base64 / float time |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(row.texts, row.encoding): row for row in rows}
    for size in BATCHES:
        plain, packed = by[(size, "float")], by[(size, "base64")]
        lines.append(
            f"| {size} | {plain.colbert_rows} | {plain.bytes_per_answer / 1e6:.2f} MB "
            f"| {packed.bytes_per_answer / 1e6:.2f} MB "
            f"| {plain.p50_ms:.1f} ms ({plain.p99_ms:.1f}) "
            f"| {packed.p50_ms:.1f} ms ({packed.p99_ms:.1f}) "
            f"| {packed.p50_ms / plain.p50_ms:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()

    from tests.fixtures.tiny_models import build_m3, build_reranker

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        env = {
            **os.environ,
            **ENV,
            "PORT": str(port),
            "EMBEDDING_MODEL_NAME": str(
                build_m3(
                    root / "m3-wide",
                    hidden_size=1024,
                    num_attention_heads=16,
                    intermediate_size=1024,
                )
            ),
            "RERANKER_MODEL_NAME": str(build_reranker(root / "rr")),
        }
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("bge-serve"))],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/health").json().get("status") == "ok":
                        break
                except (httpx.TransportError, ValueError):
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("bge-serve did not start")
                time.sleep(0.2)
            rounds = []
            for index in range(args.rounds):
                rounds.append(one_round(url, args.requests))
                print(f"round {index + 1} of {args.rounds} done", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=30)
    rows = median_rows(rounds)
    write_results(
        RESULTS,
        [asdict(row) for row in rows],
        rounds=args.rounds,
        requests=args.requests,
    )
    print(table(rows))


if __name__ == "__main__":
    main()
