"""HTTP rows: bge-serve subprocesses, one per dtype, under bench/load.py's closed loop.

Both servers load at once and then take turns scenario by scenario; the embedding cache is
off (CACHE_MAX_ITEMS=0) so every text is computed. Memory each held: VmHWM and VmRSS from
/proc, GPU memory from nvidia-smi.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gpu_plan import (
    BATCH_TOKENS,
    PEAK_TFLOPS,
    ROOT,
    Profile,
    Workload,
    flops,
    model_folders,
    workloads,
)
from bench.gpu_record import Part, Row


@dataclass
class Server:
    dtype: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    served_dtype: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def dtype_env(dtype: str) -> tuple[dict[str, str] | None, str]:
    """The settings that ask bge-serve for ``dtype``: DTYPE where this checkout has it,
    else USE_FP16 (float16 only)."""
    import msgspec

    from engine.settings import Settings

    if "dtype" in {f.name for f in msgspec.structs.fields(Settings)}:
        return {"DTYPE": dtype}, ""
    if dtype == "float16":
        return {"USE_FP16": "true"}, "USE_FP16=true (this checkout has no DTYPE setting)"
    return None, "skipped: this checkout's bge-serve has no DTYPE setting (only USE_FP16)"


def start_server(folders: dict[str, Path], profile: Profile, dtype: str, work: Path) -> Server:
    from bench.load import free_port

    settings, _ = dtype_env(dtype)
    assert settings is not None
    port = free_port()
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "warning",
        "DEVICE": profile.device,
        "EMBEDDING_MODEL_NAME": str(folders["m3"]),
        "RERANKER_MODEL_NAME": str(folders["reranker"]),
        "MAX_BATCH_TOKENS": str(BATCH_TOKENS),
        # Repeated texts would be answered from the cache: the forward passes are measured.
        "CACHE_MAX_ITEMS": "0",
        # ColBERT answers of 16 texts are ~100 MB estimated: room for every client's.
        "MAX_INFLIGHT_RESPONSE_BYTES": str(16 * 2**30),
        "HF_HUB_OFFLINE": "1",
        **settings,
    }
    log = work / f"server-{dtype}.log"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli"],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": path},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return Server(dtype, port, process, log, env)


def wait_ready(server: Server, deadline: float) -> None:
    import httpx

    while True:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"bge-serve ({server.dtype}) exited {server.process.returncode}:\n{tail}"
            )
        try:
            if httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200:
                health = httpx.get(f"{server.url}/health", timeout=5).json()
                flag = health.get("backends", {}).get("flag", {})
                server.served_dtype = flag.get("dtype")
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            tail = server.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"bge-serve ({server.dtype}) not ready in time:\n{tail}")
        time.sleep(0.5)


def stop_server(server: Server) -> dict[str, Any]:
    """Stop it, and say what it held: VmHWM/VmRSS from /proc and GPU memory from nvidia-smi."""
    held: dict[str, Any] = {"gpu_mib": process_gpu_mib(server.process.pid)}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                held[f"{key}_mib"] = int(value.split()[0]) / 1024
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
    return held


def process_gpu_mib(pid: int) -> float | None:
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-compute-apps=pid,used_memory",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return float(fields[1])
    return None


def http(args: argparse.Namespace, profile: Profile, part: Part) -> None:
    folders = model_folders(args.work)
    loads = workloads(profile.shape, profile)
    servers: list[Server] = []
    try:
        for dtype in args.dtypes:
            settings, note = dtype_env(dtype)
            if note:
                part.notes.append(f"bge-serve {dtype}: {note}")
            if settings is not None:
                servers.append(start_server(folders, profile, dtype, args.work))
        part.extra["servers"] = {s.dtype: s.env for s in servers}
        part.save()
        # Both load at once: their start-up (imports, weights, CUDA) overlaps.
        deadline = time.monotonic() + min(profile.server_start_s, max(part.left_s() - 10, 1))
        ready: list[Server] = []
        for server in servers:
            row = Row("bge-serve start", "http", "-", "-", server.dtype)
            with part.measuring(row):
                begin = time.monotonic()
                wait_ready(server, deadline)
                row.seconds = time.monotonic() - begin
                row.note = f"ready; /health says dtype {server.served_dtype}"
                ready.append(server)
        long = next(w for name, w in loads.items() if name.startswith("long"))
        # Rerank last: a failing model trips the router's breaker, which would fail the
        # embedding scenarios after it too.
        scenarios = (
            ("dense", loads["mixed 16-512"], "/v1/embeddings"),
            ("hybrid", loads["mixed 16-512"], "/v1/hybrid-embeddings"),
            ("long", long, "/v1/embeddings"),
            ("rerank", loads["rerank mixed 16-496"], "/v1/rerank"),
        )
        need = profile.http_s + profile.http_warmup_s + 2
        # The servers take turns scenario by scenario, so a slow minute hits both alike.
        for scenario, workload, route in scenarios:
            for server in ready:
                op = "dense" if scenario == "long" else scenario
                row = Row("bge-serve HTTP", "http", workload.name, op, server.dtype)
                if not part.skipped(row, need):
                    with part.measuring(row):
                        http_row(row, server, scenario, workload, route, profile)
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                part.extra.setdefault("server_memory", {})[server.dtype] = stop_server(server)
        part.save()


def probe(server: Server, route: str, body: dict[str, object]) -> str:
    """One request's status and the start of its answer: what a failed scenario got."""
    import httpx

    try:
        answer = httpx.post(f"{server.url}{route}", json=body, timeout=120)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}; server log {server.log}"
    return f"HTTP {answer.status_code}: {answer.text[:300]}; server log {server.log}"


def http_bodies(scenario: str, workload: Workload, per: int) -> list[dict[str, object]]:
    bodies: list[dict[str, object]] = []
    texts = workload.texts
    for start in range(0, len(texts) - per + 1, per):
        chunk = texts[start : start + per]
        if scenario == "rerank":
            bodies.append({"query": workload.query or "", "documents": chunk})
        elif scenario == "hybrid":
            bodies.append({"input": chunk, "return_colbert": True, "encoding_format": "base64"})
        else:
            bodies.append({"input": chunk, "encoding_format": "base64"})
    return bodies


def http_row(
    row: Row, server: Server, scenario: str, workload: Workload, route: str, profile: Profile
) -> None:
    import asyncio

    from bench.load import Target, closed_loop

    clients, per = profile.clients[scenario]
    per = min(per, len(workload.texts))
    bodies = http_bodies(scenario, workload, per)
    used = len(bodies) * per
    mean_tokens = sum(workload.lengths[:used]) / used
    mean_flops = flops(workload.lengths[:used], profile.shape, row.op) / used
    target = Target(f"bge-serve {server.dtype}", server.url, route, route, None)
    done, errors, elapsed, latencies = asyncio.run(
        closed_loop(target, route, bodies, clients, profile.http_s, profile.http_warmup_s)
    )
    if done == 0 and errors == 0:
        # Nothing sent after the warm-up came back in time (a slow CPU): once more, longer.
        done, errors, elapsed, latencies = asyncio.run(
            closed_loop(target, route, bodies, clients, 4 * profile.http_s, profile.http_warmup_s)
        )
    if done == 0:
        got = probe(server, route, bodies[0])
        raise RuntimeError(f"no request answered 200 ({errors} errors); one more got {got}")
    failures = (
        f"; {errors} not answered 200, e.g. {probe(server, route, bodies[0])}" if errors else ""
    )
    latencies.sort()
    row.texts = done * per
    row.tokens = round(row.texts * mean_tokens)
    row.seconds = elapsed
    row.reps = done
    row.errors = errors
    row.texts_per_s = row.texts / elapsed
    row.tokens_per_s = row.tokens / elapsed
    row.tflop_per_s = row.texts * mean_flops / elapsed / 1e12
    row.peak_fraction = row.tflop_per_s / PEAK_TFLOPS
    row.p50_ms = statistics.median(latencies) * 1000
    row.p99_ms = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000
    row.note = (
        f"{clients} clients x {per} texts, {route}"
        + (f", served as {server.served_dtype}" if server.served_dtype else "")
        + failures
    )
