"""A pass's heads come off the device in one copy, each as float32 in its own shape; the
attention kernel is chosen by device, dtype and what is installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from backends.flag.batches import pad
from backends.flag.transfer import attention_for, to_host


@pytest.mark.parametrize("one_copy", [True, False])
def test_heads_come_back_whole_and_in_order(one_copy: bool) -> None:
    dense = torch.randn(3, 8)
    weights = torch.randn(3, 5, dtype=torch.bfloat16)
    colbert = torch.randn(3, 4, 8)
    answers = to_host([dense, None, weights, colbert], one_copy=one_copy)
    assert answers[1] is None
    got_dense, _, got_weights, got_colbert = answers
    assert got_dense is not None and got_weights is not None and got_colbert is not None
    assert all(a.dtype == np.float32 for a in (got_dense, got_weights, got_colbert))
    np.testing.assert_array_equal(got_dense, dense.numpy())
    np.testing.assert_array_equal(got_weights, weights.float().numpy())
    np.testing.assert_array_equal(got_colbert, colbert.numpy())


def test_nothing_asked_is_nothing_returned() -> None:
    assert to_host([None, None]) == [None, None]


def test_sdpa_on_a_cpu_and_flash_only_in_half_precision_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert attention_for("cpu", torch.bfloat16) == "sdpa"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "flash_attn" else real(name, *a),
    )
    assert attention_for("cuda", torch.float16) == "flash_attention_2"
    assert attention_for("cuda", torch.float32) == "sdpa"  # flash-attention has no fp32
    assert attention_for("cpu", torch.float16) == "sdpa"


def test_pad_on_a_cpu_keeps_the_rows() -> None:
    ids, mask = pad([[5, 6, 7], [8]], pad_id=1, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
