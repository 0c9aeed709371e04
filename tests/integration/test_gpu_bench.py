"""bench/gpu.sh --tiny: the GPU benchmark's every step, on a CPU with tiny models.

What a GPU machine runs once, in one prepared call, is run here end to end (wheel install,
model build, in-process rows, bge-serve subprocesses over HTTP, the report), so that the
device call does not fail on a typo. Rates on tiny models mean nothing: the checks are
that every row was measured, every field is there and the values are consistent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.gpu_models import SHAPES, build_tokenizer, text_of, vocabulary_of
from bench.gpu_plan import PEAK_TFLOPS, TINY, flops, workloads

ROOT = Path(__file__).resolve().parents[2]

ROW_FIELDS = {
    "system",
    "kind",
    "workload",
    "op",
    "dtype",
    "texts",
    "tokens",
    "seconds",
    "reps",
    "texts_per_s",
    "tokens_per_s",
    "tflop_per_s",
    "peak_fraction",
    "peak_gpu_mib",
    "weights_gpu_mib",
    "errors",
    "p50_ms",
    "p99_ms",
    "note",
    "error",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    work = tmp_path_factory.mktemp("work")
    results = tmp_path_factory.mktemp("results")
    out = tmp_path_factory.mktemp("out")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "WORK": str(work),
        "RESULTS": str(results),
        "OUT": str(out),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-6000:]
    (result,) = results.glob("gpu-tiny-*.json")
    return json.loads(result.read_text()), console, out


def test_every_step_ran_and_is_recorded(run: tuple[dict[str, Any], str, Path]) -> None:
    result, console, out = run
    assert [s["step"] for s in result["steps"]] == ["install", "env", "build", "inprocess", "http"]
    assert all(s["status"] == "ok" and s["seconds"] <= s["limit_s"] for s in result["steps"])
    assert result["failed"] == [] and result["interrupted"] == []
    assert result["tiny"] is True and result["shape"]["name"] == "tiny"
    assert "every step ok" in console
    # What the device tool brings back: the JSON, the table, the servers' logs.
    names = {p.name for p in out.iterdir()}
    assert {n.split(".")[-1] for n in names if n.startswith("gpu-tiny-")} == {"json", "md"}
    assert {"server-bfloat16.log", "server-float16.log"} <= names
    assert len(names) <= 8


def test_rows_cover_every_system_workload_and_dtype(run: tuple[dict[str, Any], str, Path]) -> None:
    result, _, _ = run
    rows = [r for r in result["rows"] if r["kind"] in ("call", "passes", "http")]
    measured = [r for r in rows if r["system"] not in ("load", "bge-serve start")]
    for row in rows:
        assert set(row) == ROW_FIELDS
    seen = {(r["system"], r["workload"], r["op"], r["dtype"]) for r in measured}
    for dtype in ("bfloat16", "float16"):
        for wanted in (
            ("flag M3Encoder.run_batch", "64 x 256", "dense"),
            ("flag M3Encoder.run_batch", "64 x 256", "hybrid"),
            ("flag M3Encoder.encode", "mixed 16-512", "dense"),
            ("flag M3Encoder.encode", "mixed 16-512", "hybrid"),
            ("flag M3Encoder.encode", "long 128-1024", "dense"),
            ("flag CrossEncoder.score", "rerank mixed 16-496", "rerank"),
            ("sentence-transformers encode", "mixed 16-512", "dense"),
            ("sentence-transformers encode", "long 128-1024", "dense"),
            ("sentence-transformers CrossEncoder.predict", "rerank mixed 16-496", "rerank"),
            ("bge-serve HTTP", "mixed 16-512", "dense"),
            ("bge-serve HTTP", "mixed 16-512", "hybrid"),
            ("bge-serve HTTP", "rerank mixed 16-496", "rerank"),
            ("bge-serve HTTP", "long 128-1024", "dense"),
        ):
            assert (*wanted, dtype) in seen
    for row in measured:
        assert row["error"] is None
        assert row["texts"] > 0 and row["tokens"] >= row["texts"] * 3
        assert row["seconds"] > 0 and row["reps"] >= 1
        assert row["texts_per_s"] == pytest.approx(row["texts"] / row["seconds"])
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"])
        assert 0 < row["peak_fraction"] < 1
        assert row["peak_fraction"] == pytest.approx(row["tflop_per_s"] / PEAK_TFLOPS)
        assert row["peak_gpu_mib"] is None  # a CPU run: no GPU memory to report
    for row in (r for r in measured if r["kind"] == "http"):
        assert row["errors"] == 0 and row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"]


def test_servers_ran_in_the_dtype_asked(run: tuple[dict[str, Any], str, Path]) -> None:
    result, _, _ = run
    starts = [r for r in result["rows"] if r["system"] == "bge-serve start"]
    assert {r["dtype"] for r in starts} == {"bfloat16", "float16"}
    for row in starts:
        assert f"dtype {row['dtype']}" in row["note"]
    for held in result["server_memory"].values():
        assert held["VmHWM_mib"] >= held["VmRSS_mib"] > 0


def test_report_carries_targets_peers_and_the_formula(
    run: tuple[dict[str, Any], str, Path],
) -> None:
    result, console, _ = run
    assert len(result["targets"]) == 4
    for target in result["targets"]:
        assert target["measured"] is not None and target["met"] in (True, False)
    assert set(result["environment"]["peers"]) == {"vllm", "infinity_emb"}
    assert "4 x layers x hidden x L^2" in result["flop_formula"]
    assert result["environment"]["versions"]["torch"]
    assert "| system | kind | workload |" in console and "| target | measured |" in console


def test_texts_have_the_token_counts_the_flops_assume() -> None:
    """The FLOP count rests on exact lengths: a text of N words is N + 2 tokens."""
    shape = SHAPES["tiny"]
    tokenizer = build_tokenizer(shape.vocab_size, shape.max_tokens)
    loads = workloads(shape, TINY)
    for workload in loads.values():
        if workload.query is None:
            counts = [len(ids) for ids in tokenizer(workload.texts)["input_ids"]]
        else:
            counts = [
                len(ids)
                for ids in tokenizer([workload.query] * len(workload.texts), workload.texts)[
                    "input_ids"
                ]
            ]
        assert counts == workload.lengths, workload.name
    import random

    assert len(tokenizer(text_of(7, vocabulary_of(shape), random.Random(3)))["input_ids"]) == 7
    # 568 M parameters and the H200 target's shape: 64 x 256 tokens, ~10.3 TFLOP a pass.
    real = SHAPES["bge-m3"]
    assert real.layer_weights == 24 * (4 * 1024 * 1024 + 2 * 1024 * 4096)
    assert flops([256] * 64, real, "dense") == pytest.approx(
        64 * (2 * real.layer_weights * 256 + 4 * 24 * 1024 * 256 * 256)
    )
    assert flops([256] * 64, real, "dense") / 1e12 == pytest.approx(10.3, rel=0.01)
