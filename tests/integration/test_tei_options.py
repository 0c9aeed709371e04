"""TEI's ``normalize: false`` and ``truncation_direction: Left`` on the flag backend, against
FlagEmbedding and transformers on the same folder.

- ``normalize: false`` answers bge-m3's CLS hidden state before normalisation (what TEI
  answers, and what haystack's HuggingFaceAPITextEmbedder asks for by default);
- ``Left`` keeps the end of a long text: the embedding of ``<s>``, its last tokens and
  ``</s>``, as FlagEmbedding computes it with its tokenizer cutting from the left.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from litestar.testing import TestClient
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from api.app import create_app
from backends import build_chains
from engine import InferenceEngine, Settings
from tests.conftest import ModelDirs, wait_started
from tests.fixtures.tiny_models import MAX_TOKENS, build_m3, set_pooling
from tests.reference import M3Reference, m3_reference
from tests.texts import LONG_TEXT

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", LONG_TEXT]


@pytest.fixture(scope="module")
def tei(models: ModelDirs) -> Iterator[TestClient[Any]]:
    settings = Settings(
        dtype="float32",
        embedding_model_name=str(models.m3),
        rerank_backends=(),
        device="cpu",
        cache_max_items=1000,  # on: raw and normalised rows must each have their own
        max_text_chars=20_000,
    )
    engine = InferenceEngine(settings, build_chains(settings))
    with TestClient(create_app(settings, engine), timeout=120) as client:
        wait_started(client)
        yield client


def embed(client: TestClient[Any], path: str, **body: Any) -> Any:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def cls_states(models: ModelDirs, rows: list[list[int]]) -> np.ndarray:
    """transformers' CLS hidden state of each row of token ids: bge-m3's pooled vector."""
    model = AutoModel.from_pretrained(models.m3).eval()
    with torch.inference_mode():
        states = [
            model(input_ids=torch.tensor([row])).last_hidden_state[0, 0].numpy() for row in rows
        ]
    return np.stack(states).astype(np.float32)


def token_rows(models: ModelDirs, texts: list[str], side: str = "right") -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(models.m3)
    tokenizer.truncation_side = side
    return [list(r) for r in tokenizer(texts, truncation=True, max_length=MAX_TOKENS).input_ids]


def left_reference(models: ModelDirs, texts: list[str]) -> M3Reference:
    """FlagEmbedding's heads with its tokenizer cutting a long text's start."""
    return m3_reference(models.m3, texts, max_length=MAX_TOKENS, truncation_side="left")


def test_normalize_false_is_the_cls_state_before_normalisation(
    tei: TestClient[Any], models: ModelDirs
) -> None:
    raw = np.asarray(embed(tei, "/embed", inputs=TEXTS, normalize=False), dtype=np.float32)
    expected = cls_states(models, token_rows(models, TEXTS))
    np.testing.assert_allclose(raw, expected, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-2)
    # The normalised answer is unchanged: FlagEmbedding's, and the raw one made unit.
    unit = np.asarray(embed(tei, "/embed", inputs=TEXTS), dtype=np.float32)
    np.testing.assert_allclose(unit, m3_reference(models.m3, TEXTS).dense, atol=1e-5)
    np.testing.assert_allclose(
        unit, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5
    )
    # Asked again (now cached), each answer is still its own.
    again_raw = embed(tei, "/embed", inputs=TEXTS, normalize=False)
    again_unit = embed(tei, "/embed", inputs=TEXTS, normalize=True)
    assert again_raw == raw.tolist() and again_unit == unit.tolist()


def test_normalize_false_with_dimensions_is_the_cut_raw_vector(tei: TestClient[Any]) -> None:
    raw = embed(tei, "/embed", inputs=TEXTS[:2], normalize=False)
    cut = embed(tei, "/embed", inputs=TEXTS[:2], normalize=False, dimensions=8)
    np.testing.assert_allclose(cut, np.asarray(raw)[:, :8], atol=1e-6)


def test_left_keeps_the_end_of_a_long_text(tei: TestClient[Any], models: ModelDirs) -> None:
    left_rows = token_rows(models, [LONG_TEXT], "left")
    full = AutoTokenizer.from_pretrained(models.m3)(LONG_TEXT).input_ids
    assert len(full) > MAX_TOKENS  # so Left and Right differ
    # <s>, the text's last MAX_TOKENS - 2 tokens, </s>.
    assert left_rows[0] == [full[0], *full[-(MAX_TOKENS - 1) : -1], full[-1]]
    left = np.asarray(
        embed(tei, "/embed", inputs=[LONG_TEXT], truncation_direction="Left"), dtype=np.float32
    )
    state = cls_states(models, left_rows)
    np.testing.assert_allclose(left, state / np.linalg.norm(state), atol=1e-5)
    right = embed(tei, "/embed", inputs=[LONG_TEXT], truncation_direction="Right")
    assert not np.allclose(left, right, atol=1e-3)
    np.testing.assert_allclose(right, m3_reference(models.m3, [LONG_TEXT]).dense, atol=1e-5)
    raw_left = embed(
        tei, "/embed", inputs=[LONG_TEXT], truncation_direction="left", normalize=False
    )
    np.testing.assert_allclose(raw_left, state, atol=1e-5)


def test_left_on_every_tei_route_equals_flagembedding_cutting_from_the_left(
    tei: TestClient[Any], models: ModelDirs
) -> None:
    reference = left_reference(models, TEXTS)
    dense = embed(tei, "/embed", inputs=TEXTS, truncation_direction="Left")
    np.testing.assert_allclose(dense, reference.dense, atol=1e-5)
    matrices = embed(tei, "/embed_all", inputs=TEXTS, truncation_direction="Left")
    for got, expected in zip(matrices, reference.colbert, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    sparse = embed(tei, "/embed_sparse", inputs=TEXTS, truncation_direction="Left")
    for got, expected in zip(sparse, reference.lexical, strict=True):
        assert {str(v["index"]): pytest.approx(v["value"], abs=1e-5) for v in got} == expected
    # A text that fits is the same whichever end would be cut.
    short = embed(tei, "/embed", inputs=TEXTS[:2])
    np.testing.assert_allclose(dense[:2], short, atol=1e-6)


def test_left_without_truncation_still_refuses_a_long_text(tei: TestClient[Any]) -> None:
    response = tei.post(
        "/embed", json={"inputs": [LONG_TEXT], "truncate": False, "truncation_direction": "Left"}
    )
    assert response.status_code == 413, response.text


@pytest.mark.parametrize(("pooling", "tei_name"), [("mean", "mean"), ("lasttoken", "last_token")])
def test_a_folder_pooled_otherwise_is_served_and_described_as_it_says(
    tmp_path: Path, pooling: str, tei_name: str
) -> None:
    folder = set_pooling(build_m3(tmp_path / "m"), pooling, normalize=False)
    settings = Settings(
        dtype="float32",
        embedding_model_name=str(folder),
        lexical_colbert_backends=(),
        rerank_backends=(),
        device="cpu",
    )
    engine = InferenceEngine(settings, build_chains(settings))
    with TestClient(create_app(settings, engine), timeout=120) as client:
        wait_started(client)
        info = client.get("/info").json()
        raw = embed(client, "/embed", inputs=TEXTS[:2], normalize=False)
        unit = embed(client, "/embed", inputs=TEXTS[:2])
    assert info["model_type"] == {"embedding": {"pooling": tei_name}}
    # No Normalize module: sentence-transformers answers the pooled vector itself.
    expected = SentenceTransformer(str(folder), device="cpu").encode(TEXTS[:2])
    np.testing.assert_allclose(raw, expected, atol=1e-5)
    np.testing.assert_allclose(
        unit, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5
    )
