"""The GPU benchmark's report: every part's JSON and bench/gpu.sh's step record into
bench/results/gpu-<date>.json and a Markdown table, with the issue's targets."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.gpu_plan import BATCH_TOKENS, PEAK_TFLOPS, TINY, Profile
from bench.gpu_record import Part


def load_part(work: Path, name: str) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads((work / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {"rows": [], "notes": [f"part {name} wrote nothing"], "current": None}
    return loaded


def steps(work: Path) -> list[dict[str, Any]]:
    """bench/gpu.sh's record: one ``name rc seconds limit`` line per step."""
    out = []
    with contextlib.suppress(OSError):
        for line in (work / "steps.txt").read_text().splitlines():
            name, rc, seconds, limit = line.split()
            code = int(rc)
            status = "ok" if code == 0 else ("timed out" if code in (124, 137) else "failed")
            out.append(
                {
                    "step": name,
                    "rc": code,
                    "status": status,
                    "seconds": int(seconds),
                    "limit_s": int(limit),
                }
            )
    return out


def find_rate(rows: list[dict[str, Any]], **match: str) -> dict[str, Any] | None:
    for row in rows:
        if row.get("error") is None and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def targets(rows: list[dict[str, Any]], dtypes: Sequence[str]) -> list[dict[str, Any]]:
    """The issue's GPU targets, each measured in this run (None where its rows failed)."""
    out: list[dict[str, Any]] = []

    def goal(name: str, value: float | None, bound: float) -> None:
        out.append(
            {
                "target": name,
                "measured": None if value is None else round(value, 3),
                "goal": f">= {bound}",
                "met": None if value is None else value >= bound,
            }
        )

    for dtype in dtypes:
        passes = find_rate(
            rows, system="flag M3Encoder.run_batch", workload="64 x 256", op="dense", dtype=dtype
        )
        goal(
            f"forward passes, dense 64 x 256, {dtype}: fraction of {PEAK_TFLOPS:.0f} TFLOP/s",
            passes["peak_fraction"] if passes else None,
            0.35,
        )
        served = find_rate(
            rows, system="bge-serve HTTP", workload="mixed 16-512", op="dense", dtype=dtype
        )
        alone = find_rate(
            rows,
            system="sentence-transformers encode",
            workload="mixed 16-512",
            op="dense",
            dtype=dtype,
        )
        goal(
            f"HTTP dense mixed texts/s / sentence-transformers in-process, {dtype}",
            served["texts_per_s"] / alone["texts_per_s"] if served and alone else None,
            1.3,
        )
    return out


def report(args: argparse.Namespace, profile: Profile, part: Part) -> None:
    parts = {name: load_part(args.work, name) for name in ("env", "build", "inprocess", "http")}
    rows = [row for name in ("build", "inprocess", "http") for row in parts[name]["rows"]]
    interrupted = [
        f"part {name} was stopped during: {p['current']}"
        for name, p in parts.items()
        if p.get("current")
    ]
    stamp = datetime.now(UTC)
    result: dict[str, Any] = {
        "benchmark": "bench/gpu.py",
        "tiny": profile is TINY,
        "date": stamp.isoformat(timespec="seconds"),
        "environment": {k: v for k, v in parts["env"].items() if k not in ("rows", "current")},
        "shape": asdict(profile.shape),
        "peak_tflops": PEAK_TFLOPS,
        "flop_formula": (
            "per text of L tokens: 2 x W x L + 4 x layers x hidden x L^2, W = layers x "
            "(4 hidden^2 + 2 hidden x intermediate) encoder matrix weights; hybrid adds "
            "2 x (hidden^2 + hidden) x L (ColBERT, sparse heads), rerank 2 x (hidden^2 + "
            "hidden) per pair; padding, embeddings, norms and softmax not counted"
        ),
        "batch_tokens": BATCH_TOKENS,
        "dtypes": list(args.dtypes),
        "steps": steps(args.work),
        "interrupted": interrupted,
        "notes": [n for p in parts.values() for n in p.get("notes", [])],
        "rows": rows,
        "failed": [
            {k: r[k] for k in ("system", "workload", "op", "dtype", "error")}
            for r in rows
            if r.get("error")
        ],
        "targets": targets(rows, args.dtypes),
        "server_memory": parts["http"].get("server_memory", {}),
    }
    result["parameters"] = {
        r["system"].removeprefix("build "): r["note"] for r in parts["build"]["rows"] if r["note"]
    }
    table = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"gpu{'-tiny' if profile is TINY else ''}-{stamp:%Y-%m-%d}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{name}.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten: {args.out / name}.json and .md")
    part.extra["written"] = str(args.out / f"{name}.json")


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    env_info = result["environment"]
    gpu = env_info.get("gpu", {}).get("name", env_info.get("device", "?"))
    versions = env_info.get("versions", {})
    lines = [
        f"GPU benchmark, {result['date']}, {gpu}; torch {versions.get('torch')}, "
        f"transformers {versions.get('transformers')}, "
        f"sentence-transformers {versions.get('sentence-transformers')}; "
        f"{result['shape']['name']} shape, random weights; "
        f"peak {result['peak_tflops']:.0f} TFLOP/s"
        + (
            f" (an 8192^3 bf16 matmul measured {matmul} here)"
            if (matmul := env_info.get("gpu", {}).get("matmul_bf16_tflops"))
            else ""
        )
        + (" (tiny CPU check: rates mean nothing)" if result["tiny"] else ""),
        "",
        "| system | kind | workload | op | dtype | texts/s | tokens/s | TFLOP/s | % of peak "
        "| peak GPU MiB | note |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        if r["kind"] == "build" or r["system"] in ("load", "bge-serve start"):
            continue
        if r.get("error"):
            lines.append(
                f"| {r['system']} | {r['kind']} | {r['workload']} | {r['op']} | {r['dtype']} "
                f"| - | - | - | - | - | {r['error'][:120]} |"
            )
            continue
        lines.append(
            f"| {r['system']} | {r['kind']} | {r['workload']} | {r['op']} | {r['dtype']} "
            f"| {_number(r['texts_per_s'], 1)} | {_number(r['tokens_per_s'])} "
            f"| {_number(r['tflop_per_s'], 1)} | {100 * r['peak_fraction']:.1f} "
            f"| {_number(r['peak_gpu_mib'])} | {r['note']} |"
        )
    lines += ["", "| target | measured | goal | met |", "|---|---:|---|---|"]
    for t in result["targets"]:
        met = {True: "yes", False: "no", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {_number(t['measured'], 3)} | {t['goal']} | {met} |")
    lines += ["", "| step | status | seconds | limit |", "|---|---|---:|---:|"]
    for s in result["steps"]:
        lines.append(
            f"| {s['step']} | {s['status']} (rc {s['rc']}) | {s['seconds']} | {s['limit_s']} |"
        )
    extra = [*result["interrupted"], *result["notes"]]
    extra += [f"{k}: {v}" for k, v in env_info.get("peers", {}).items()]
    extra += [
        f"failed: {f['system']} / {f['workload']} / {f['dtype']}: {f['error'][:200]}"
        for f in result["failed"]
    ]
    for dtype, held in result["server_memory"].items():
        extra.append(f"bge-serve {dtype} held: {held}")
    if extra:
        lines += ["", *[f"- {line}" for line in extra]]
    return "\n".join(lines)
