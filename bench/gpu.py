"""The GPU benchmark: bge-m3-sized models, in-process and over HTTP, against sentence-transformers.

    bash bench/gpu.sh            # on the GPU machine (docs/gpu-benchmark.md)
    bash bench/gpu.sh --tiny     # the same code on a CPU with tiny models, in seconds

bench/gpu.sh runs the parts below one by one, each under its own time limit, so that one
hang costs one part; every part writes its JSON after each measurement, so a part that
is stopped keeps what it measured and names the measurement it was in.

- ``env``: versions, the GPU, and whether the optional peers (vLLM, infinity_emb) are here;
- ``build``: random-weight bge-m3 and bge-reranker-v2-m3 folders at the real size
  (bench/gpu_models.py);
- ``inprocess``: this project's flag backend classes (M3Encoder / CrossEncoder) and
  sentence-transformers in this process, same folder, same texts, fp16 and bf16: whole
  calls (tokenisation included) and the forward passes alone (pre-tokenised);
- ``http``: bge-serve subprocesses (DEVICE=cuda, DTYPE=float16 and bfloat16) under a
  closed loop of clients (bench/load.py's), cache off;
- ``report``: one JSON (bench/results/gpu-<date>.json) and a Markdown table.

Workloads and the FLOP formula: bench/gpu_plan.py. The run: docs/gpu-benchmark.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.gpu_http import http
from bench.gpu_inprocess import inprocess
from bench.gpu_plan import DTYPES, GPU, ROOT, TINY, Profile, model_folders, release
from bench.gpu_record import Part, Row
from bench.gpu_report import report

PEERS = {
    "vllm": "vLLM's wheels are built against their own torch and CUDA (hundreds of MB): "
    "they cannot travel in a 64 MiB call",
    "infinity_emb": "infinity-emb 0.0.78 pins numpy<2, sentence-transformers<4 and "
    "transformers<5: it cannot install beside this machine's stack",
}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in (
        "torch",
        "transformers",
        "sentence-transformers",
        "tokenizers",
        "numpy",
        "huggingface-hub",
        "litestar",
        "msgspec",
        "uvicorn",
        "httptools",
    ):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def env(args: argparse.Namespace, profile: Profile, part: Part) -> None:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "versions": versions(),
        "device": profile.device,
        "cuda": torch.version.cuda,
    }
    if profile.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no GPU")
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "bf16": torch.cuda.is_bf16_supported(),
            "matmul_bf16_tflops": round(matmul_tflops(), 1),
        }
    peers = {}
    for module, why in PEERS.items():
        if importlib.util.find_spec(module) is None:
            peers[module] = f"not measured: not installed here ({why})"
        else:
            peers[module] = (
                f"installed ({importlib.metadata.version(module.replace('_', '-'))}), "
                "not measured by bench/gpu.py"
            )
        print(f"  peer {module}: {peers[module]}", flush=True)
    info["peers"] = peers
    part.extra.update(info)
    print(json.dumps(info, indent=2), flush=True)


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
    """This GPU's bf16 matrix rate on random data (the ceiling PEAK_TFLOPS stands for),
    the mean of ``repeats`` products after three warm-ups, timed with CUDA events."""
    import torch

    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeats
    del a, b
    torch.cuda.empty_cache()
    return float(2 * size**3 / seconds / 1e12)


def build(args: argparse.Namespace, profile: Profile, part: Part) -> None:
    from bench.gpu_models import build_m3, build_reranker, parameters

    folders = model_folders(args.work)
    device = profile.device
    for key, builder in (("m3", build_m3), ("reranker", build_reranker)):
        row = Row(f"build {folders[key].name}", "build", "-", "-", "float32")
        with part.measuring(row):
            begin = time.monotonic()
            builder(folders[key], profile.shape, device=device)
            row.seconds = time.monotonic() - begin
            row.note = f"{parameters(folders[key]):,} parameters"
            release(device)
    part.extra["shape"] = asdict(profile.shape)


PARTS: dict[str, Callable[[argparse.Namespace, Profile, Part], None]] = {
    "env": env,
    "build": build,
    "inprocess": inprocess,
    "http": http,
    "report": report,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU, in seconds")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bge-gpu-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--budget-s", type=float, default=600.0, help="this part's time: later rows are skipped"
    )
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated")
    args = parser.parse_args(argv)
    args.dtypes = tuple(d for d in args.dtypes.split(",") if d)
    profile = TINY if args.tiny else GPU
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    args.work.mkdir(parents=True, exist_ok=True)
    # The part's own time, less a margin to write its JSON before bench/gpu.sh's limit.
    part = Part(args.work / f"{args.part}.json", time.monotonic() + args.budget_s - 5)
    part.save()
    print(f"== bench/gpu.py {args.part} ({'tiny, cpu' if args.tiny else 'gpu'})", flush=True)
    try:
        PARTS[args.part](args, profile, part)
    except Exception as exc:  # noqa: BLE001 - said in the part's JSON, then the exit code
        part.notes.append(f"part {args.part} failed: {type(exc).__name__}: {exc}"[:3000])
        part.save()
        traceback.print_exc()
        return 1
    part.save()
    failed = [r for r in part.rows if r.error and not r.error.startswith("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
