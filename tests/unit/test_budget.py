"""The request budgets' defaults let every documented use through and refuse the issue's
reproducers; the answer estimate is close to what the JSON answer really weighs."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from engine.budget import Budget, answer_bytes
from engine.errors import InputTooLarge
from engine.settings import Settings
from engine.types import Output

DEFAULT = Budget.from_settings(Settings())
DENSE = frozenset({Output.DENSE})
COLBERT = frozenset({Output.COLBERT})
HYBRID = frozenset(Output)


def test_the_documented_uses_fit_the_defaults() -> None:
    # 2,048 texts of 512 tokens, dense: never counted on a 512-token model.
    assert DEFAULT.fits_worst_case(DENSE, 1024, 2048, 512)
    # On bge-m3's 8,192-token limit they are counted, and fit (sparse too).
    DEFAULT.check(HYBRID - {Output.COLBERT}, 1024, [512] * 2048, field="input", texts=2048)
    # docs/benchmarks.md's ColBERT figures: 32 passages, 2,819 rows (a 62 MB answer).
    DEFAULT.check(COLBERT, 1024, [2819 // 32 + 2] * 32, field="input", texts=32)
    # bge-index --colbert: batches of 32 documents of up to 512 tokens.
    DEFAULT.check(HYBRID, 1024, [512] * 32, field="input", texts=32)


@pytest.mark.parametrize("texts", [4, 24])
def test_the_reproducers_colbert_answers_are_refused(texts: int) -> None:
    """/embed_all of texts at bge-m3's 8,192-token limit: 4 were a 710 MB answer."""
    with pytest.raises(InputTooLarge) as refused:
        DEFAULT.check(COLBERT, 1024, [8192] * texts, field="inputs", texts=texts)
    message = refused.value.message
    assert f"limit is {512 * 1024 * 1024} (MAX_RESPONSE_BYTES)" in message
    assert f"~{answer_bytes(COLBERT, 1024, [8192] * texts)} bytes" in message


def test_past_the_token_budget_names_the_count_and_the_limit() -> None:
    with pytest.raises(InputTooLarge) as refused:
        DEFAULT.check(DENSE, 1024, [8192] * 300, field="input", texts=2048, at_least=True)
    message = refused.value.message
    assert "at least 2457600 tokens" in message and "2097152 (MAX_REQUEST_TOKENS)" in message
    assert refused.value.param == "input"


def test_the_colbert_estimate_is_close_to_the_json_answer() -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((200, 1024)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    written = len(msgspec.json.encode(rows.tolist()))
    estimate = answer_bytes(COLBERT, 1024, [201])
    assert written <= estimate <= written * 1.1


def test_tokenize_answers_are_refused_past_the_budget_with_an_estimate() -> None:
    budget = Budget(max_tokens=10_000, max_answer_bytes=1_000_000)
    budget.check_tokens_answer(900_000, 9_000, field="inputs", done=10, of=10)
    with pytest.raises(InputTooLarge) as refused:
        budget.check_tokens_answer(1_200_000, 9_000, field="inputs", done=10, of=40)
    assert "~4800000 bytes" in refused.value.message
    with pytest.raises(InputTooLarge, match="MAX_REQUEST_TOKENS"):
        budget.check_tokens_answer(0, 10_001, field="inputs", done=1, of=1)
