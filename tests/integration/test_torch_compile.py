"""TORCH_COMPILE=true: the flag backend's compiled models give the eager models' answers,
at batch shapes other than the one they were compiled on (to float32 rounding: fused
kernels sum in another order; unnormalised sparse weights and logits are the largest
values, so they carry the largest absolute difference)."""

from __future__ import annotations

import asyncio

import numpy as np

from backends.flag import FlagBackend
from engine import Operation, Output, Settings
from engine.types import Encoding, Scores
from tests.conftest import ModelDirs
from tests.fixtures.tiny_models import corpus
from tests.texts import DOCUMENTS, QUERY


def answers(
    models: ModelDirs, loop: asyncio.AbstractEventLoop, *, compiled: bool
) -> tuple[Encoding, Scores]:
    settings = Settings(
        dtype="float32",
        torch_compile=compiled,
        embedding_model_name=str(models.m3),
        reranker_model_name=str(models.reranker),
        device="cpu",
        max_batch_tokens=600,  # several passes of other sizes and lengths
    )
    backend = FlagBackend(settings, frozenset(Operation))
    loop.run_until_complete(backend.start())
    try:
        texts = corpus(20, seed=9)
        encoding = loop.run_until_complete(backend.encode(texts, frozenset(Output)))
        return encoding, loop.run_until_complete(backend.score(QUERY, DOCUMENTS))
    finally:
        loop.run_until_complete(backend.stop())


def test_compiled_models_answer_as_eager_ones(
    models: ModelDirs, loop: asyncio.AbstractEventLoop
) -> None:
    (eager, eager_scores), (fused, fused_scores) = (
        answers(models, loop, compiled=False),
        answers(models, loop, compiled=True),
    )
    assert eager.dense is not None and fused.dense is not None
    np.testing.assert_allclose(fused.dense, eager.dense, atol=1e-5)
    assert eager.colbert is not None and fused.colbert is not None
    for ours, theirs in zip(fused.colbert, eager.colbert, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert eager.lexical is not None and fused.lexical is not None
    for ours_w, theirs_w in zip(fused.lexical, eager.lexical, strict=True):
        np.testing.assert_array_equal(ours_w.token_ids, theirs_w.token_ids)
        np.testing.assert_allclose(ours_w.weights, theirs_w.weights, rtol=1e-5, atol=5e-5)
    np.testing.assert_allclose(fused_scores.logits, eager_scores.logits, rtol=1e-5, atol=5e-5)
