"""ColBERT pruning, ``colbert_max_tokens`` on ``/v1/hybrid-embeddings``, on a live server:
the rows kept are the k of largest norm before normalising (computed here from the model
folder with torch, float32 as the test server runs), in their order, each equal to the
unpruned answer's row; what is refused is a 422 naming the field."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from transformers import AutoModel, AutoTokenizer

from tests.conftest import ModelDirs, start_server, stop_server
from tests.texts import TEXTS

SHORT = TEXTS[:4]


def raw_norms(folder: str, text: str) -> NDArray[np.float32]:
    """Each ColBERT row's norm before normalising: ``colbert_linear`` on every token after
    CLS, as bge-m3 computes it."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    hidden = model.config.hidden_size
    head = torch.nn.Linear(hidden, hidden)
    head.load_state_dict(torch.load(f"{folder}/colbert_linear.pt", map_location="cpu"))
    with torch.inference_mode():
        ids = tokenizer(text, truncation=True, return_tensors="pt")
        states = model(**ids).last_hidden_state[0, 1:]
        norms: NDArray[np.float32] = torch.linalg.vector_norm(head(states), dim=-1).numpy()
    return norms


def colbert_rows(client: httpx.Client, texts: list[str], **extra: Any) -> list[dict[str, Any]]:
    body = {"input": texts, "return_colbert": True, **extra}
    response = client.post("/v1/hybrid-embeddings", json=body)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


@pytest.mark.parametrize("keep", [1, 3, 8])
def test_the_rows_kept_are_the_top_k_by_norm_in_order(
    client: httpx.Client, models: ModelDirs, keep: int
) -> None:
    full = colbert_rows(client, SHORT)
    pruned = colbert_rows(client, SHORT, colbert_max_tokens=keep)
    for text, whole, cut in zip(SHORT, full, pruned, strict=True):
        rows = np.array(whole["colbert"])
        norms = raw_norms(str(models.m3), text)
        assert len(norms) == len(rows)
        if len(rows) <= keep:
            assert cut["colbert"] == whole["colbert"]
            continue
        # No near-ties at the cut (else float noise could pick either row).
        ranked = np.sort(norms)[::-1]
        assert ranked[keep - 1] - ranked[keep] > 1e-4
        chosen = np.sort(np.argsort(-norms, kind="stable")[:keep])
        np.testing.assert_array_equal(np.array(cut["colbert"]), rows[chosen])
        # Dense and sparse are the unpruned answer's.
        assert cut["dense"] == whole["dense"] and cut["sparse"] == whole["sparse"]


def test_a_bound_at_or_over_the_row_count_changes_nothing(client: httpx.Client) -> None:
    full = colbert_rows(client, SHORT)
    longest = max(len(row["colbert"]) for row in full)
    for keep in (longest, longest + 1, 10_000):
        assert colbert_rows(client, SHORT, colbert_max_tokens=keep) == full


def test_pruned_rows_are_quantized_row_by_row(client: httpx.Client) -> None:
    plain = colbert_rows(client, SHORT, colbert_max_tokens=3)
    ints = colbert_rows(client, SHORT, colbert_max_tokens=3, encoding_format="int8")
    halves = colbert_rows(client, SHORT, colbert_max_tokens=3, encoding_format="float16")
    for want, got, half in zip(plain, ints, halves, strict=True):
        floats = np.array(want["colbert"], dtype=np.float64)
        scales = np.abs(floats).max(axis=1) / 127
        np.testing.assert_array_equal(got["colbert"], np.rint(floats / scales[:, None]))
        np.testing.assert_array_equal(got["colbert_scales"], scales)
        decoded = [np.frombuffer(base64.b64decode(r), "<f2") for r in half["colbert"]]
        np.testing.assert_array_equal(decoded, floats.astype(np.float32).astype(np.float16))


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", True])
def test_a_bad_bound_is_422(client: httpx.Client, value: Any) -> None:
    body = {"input": SHORT, "return_colbert": True, "colbert_max_tokens": value}
    response = client.post("/v1/hybrid-embeddings", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "colbert_max_tokens", error


def test_a_bound_without_colbert_rows_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/hybrid-embeddings", json={"input": SHORT, "colbert_max_tokens": 4})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "colbert_max_tokens"
    assert "return_colbert" in error["message"]


def test_the_cache_never_mixes_pruned_and_whole_rows_and_padded_passes_prune_alike(
    client: httpx.Client, models: ModelDirs
) -> None:
    """Pruned answers are computed, not cached: a cached text is still answered whole, and
    a pruned request after a whole one is still pruned. This server runs padded passes,
    whose rows lie elsewhere in the pass than packed ones': the same rows are kept."""
    packed = colbert_rows(client, SHORT, colbert_max_tokens=5)
    live = start_server(models, {"CACHE_MAX_ITEMS": "1000", "PACKED_PASSES": "false"})
    try:
        with httpx.Client(base_url=live.url, timeout=60) as padded:
            first = colbert_rows(padded, SHORT[1:3], colbert_max_tokens=2)
            whole = colbert_rows(padded, SHORT[1:3])
            again = colbert_rows(padded, SHORT[1:3], colbert_max_tokens=2)
            assert colbert_rows(padded, SHORT[1:3]) == whole  # now from the cache
            alike = colbert_rows(padded, SHORT, colbert_max_tokens=5)
    finally:
        stop_server(live)
    for want, got in zip(packed, alike, strict=True):
        assert len(got["colbert"]) == len(want["colbert"])
        np.testing.assert_allclose(got["colbert"], want["colbert"], atol=1e-5)
    assert [len(row["colbert"]) for row in first] == [2, 2]
    assert all(len(row["colbert"]) > 2 for row in whole)
    assert again == first
