"""What the GPU benchmark runs: its two sizes, its texts, and the FLOPs they cost.

Texts have exact token counts (each word is one token of bench/gpu_models.py's tokenizer):
mixed lengths uniform in 16..512 tokens; 64 x 256 tokens (the target's shape); long
documents up to the model's 8,192; rerank pairs of a 16-token query and 16..480-token
documents. FLOPs per text of L tokens: 2 x (encoder matrix weights) x L + 4 x layers x
hidden x L^2 (QK^T and AV), plus the heads (ColBERT and sparse: 2 x (H^2 + H) per token);
embedding lookups, norms and softmax are not counted, nor is padding (useful work only).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gpu_models import SHAPES, Shape, text_of, vocabulary_of

ROOT = Path(__file__).resolve().parent.parent


# The H200's dense bf16 (and fp16) matrix rate, measured on this workplace's machines
# (an 8192^3 bf16 product through torch: 769-798 TFLOP/s); the datasheet says ~990.
PEAK_TFLOPS = 790.0


# Padded tokens per forward pass, in-process and served (MAX_BATCH_TOKENS), and the
# sentence-transformers batch size that gives it the same budget: one setting for all.
BATCH_TOKENS = 65_536


DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class Profile:
    """How big a run is: the GPU's, or the CPU check's (``--tiny``)."""

    shape: Shape
    device: str
    mixed: int
    rerank: int
    long: int
    min_s: float
    min_reps: int
    max_reps: int
    http_s: float
    http_warmup_s: float
    clients: dict[str, tuple[int, int]]  # scenario: (clients, texts per request)
    server_start_s: float


GPU = Profile(
    shape=SHAPES["bge-m3"],
    device="cuda",
    mixed=1024,
    rerank=512,
    long=32,
    min_s=1.5,
    min_reps=2,
    max_reps=20,
    http_s=5.0,
    http_warmup_s=1.5,
    clients={"dense": (16, 32), "hybrid": (8, 16), "rerank": (8, 64), "long": (8, 2)},
    server_start_s=150.0,
)


TINY = Profile(
    shape=SHAPES["tiny"],
    device="cpu",
    mixed=48,
    rerank=24,
    long=4,
    min_s=0.0,
    min_reps=1,
    max_reps=1,
    http_s=0.8,
    http_warmup_s=0.2,
    clients={"dense": (2, 8), "hybrid": (2, 4), "rerank": (2, 12), "long": (2, 1)},
    server_start_s=90.0,
)


@dataclass(frozen=True)
class Workload:
    name: str
    texts: list[str]
    lengths: list[int]  # tokens of each text (rerank: of each pair), special tokens included
    query: str | None = None  # rerank


def workloads(shape: Shape, profile: Profile) -> dict[str, Workload]:
    rng = random.Random(0)
    vocabulary = vocabulary_of(shape)

    def texts(lengths: list[int]) -> list[str]:
        return [text_of(n, vocabulary, rng) for n in lengths]

    mixed = [rng.randint(16, 512) for _ in range(profile.mixed)]
    fixed = [256] * 64
    top = shape.max_tokens
    long = [
        top // 8 + (top - top // 8) * i // max(1, profile.long - 1) for i in range(profile.long)
    ]
    query = text_of(16, vocabulary, rng)
    documents = [rng.randint(16, 480) for _ in range(profile.rerank)]
    # A pair is <s> query </s></s> document </s>: the two texts' tokens, specials included.
    return {
        "mixed 16-512": Workload("mixed 16-512", texts(mixed), mixed),
        "64 x 256": Workload("64 x 256", texts(fixed), fixed),
        f"long {top // 8}-{top}": Workload(f"long {top // 8}-{top}", texts(long), long),
        "rerank mixed 16-496": Workload(
            "rerank mixed 16-496", texts(documents), [16 + d for d in documents], query
        ),
        "rerank 64 x 256": Workload("rerank 64 x 256", texts([240] * 64), [256] * 64, query),
    }


def flops(lengths: Sequence[int], shape: Shape, op: str) -> float:
    """Useful FLOPs of one pass over texts of ``lengths`` tokens (the module's formula)."""
    hidden, layers = shape.hidden_size, shape.num_hidden_layers
    total = 0.0
    for length in lengths:
        total += 2 * shape.layer_weights * length + 4 * layers * hidden * length * length
        if op == "hybrid":
            total += 2 * (hidden * hidden + hidden) * length
        elif op == "rerank":
            total += 2 * (hidden * hidden + hidden)
    return total


def model_folders(work: Path) -> dict[str, Path]:
    return {"m3": work / "models" / "bge-m3", "reranker": work / "models" / "bge-reranker-v2-m3"}


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def release(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
