"""The engine's finishing: scores carry their logit and probability, dense rows are cut
and renormalised, lexical weights are mapped, one mapper per mapping."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import numpy as np
import pytest

from engine import Encoding, InferenceEngine, Operation, Output, Scores, Settings, TokenWeights
from engine.finishing import (
    SparseMappers,
    embeddings,
    normalized,
    pair_scores,
    ranking,
    sigmoid,
)
from tests.fake_backend import FakeBackend


def test_sigmoid_is_the_logistic_function_in_float64() -> None:
    logits = np.array([-30.0, -1.0, 0.0, 2.5, 30.0], dtype=np.float32)
    probabilities = sigmoid(logits)
    assert probabilities.dtype == np.float64
    expected = [1 / (1 + math.exp(-float(x))) for x in logits]
    np.testing.assert_allclose(probabilities, expected, rtol=1e-12)
    assert 0.0 < probabilities[0] < 1e-12 and probabilities[2] == 0.5


def test_a_ranking_carries_each_documents_logit_and_its_probability() -> None:
    scores = Scores(logits=np.array([0.5, 3.0, -2.0, 3.0], dtype=np.float32), token_count=9)
    ranked = ranking(scores, top_n=3)
    assert [r.index for r in ranked.results] == [1, 3, 0]  # ties keep input order
    for r in ranked.results:
        assert r.logit == float(scores.logits[r.index])
        assert r.score == pytest.approx(1 / (1 + math.exp(-r.logit)), rel=1e-12)
    assert ranked.prompt_tokens == 9  # every document's, those cut by top_n included
    assert len(ranking(scores, top_n=None).results) == 4


def test_pair_scores_are_in_input_order_with_logits_and_probabilities() -> None:
    groups = [[0, 2], [1, 3]]
    answers = [
        Scores(logits=np.array([1.0, -1.0], dtype=np.float32), token_count=5),
        Scores(logits=np.array([0.25, 4.0], dtype=np.float32), token_count=7),
    ]
    scores = pair_scores(4, groups, answers)
    assert scores.logits.tolist() == [1.0, 0.25, -1.0, 4.0]
    np.testing.assert_array_equal(scores.probabilities, sigmoid(scores.logits))
    assert scores.token_count == 12


def test_the_engines_pair_scores_carry_the_probability_of_each_logit() -> None:
    engine = InferenceEngine(Settings(), {op: [FakeBackend()] for op in Operation})  # type: ignore[list-item]
    asyncio.run(engine.start())
    scores = asyncio.run(engine.score_pairs([("q", "a"), ("q", "z"), ("r", "m")]))
    assert scores.logits.tolist() == [-12.0, 13.0, 0.0]  # the fake: first letter - "m"
    np.testing.assert_array_equal(scores.probabilities, sigmoid(scores.logits))
    assert scores.probabilities[2] == 0.5


def test_normalized_rows_have_unit_length_and_a_zero_row_stays_zero() -> None:
    rows = normalized(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


def _encoding() -> Encoding:
    dense = normalized(np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32))
    lexical = (TokenWeights(np.array([9, 2], np.int64), np.array([0.5, 1.5], np.float32)),)
    return Encoding(token_count=6, dense=dense, lexical=lexical)


def test_dimensions_cut_then_renormalise_only_what_is_served_normalised() -> None:
    encoding = dataclasses.replace(_encoding(), lexical=None)
    assert encoding.dense is not None
    cut = embeddings(
        encoding, frozenset({Output.DENSE}), dimensions=2, normalize=True, mapper=None
    ).dense
    assert cut is not None
    np.testing.assert_allclose(cut, normalized(encoding.dense[:, :2]), rtol=1e-6)
    raw = embeddings(
        encoding, frozenset({Output.DENSE}), dimensions=2, normalize=False, mapper=None
    ).dense
    assert raw is not None and raw.flags.c_contiguous
    np.testing.assert_array_equal(raw, encoding.dense[:, :2])
    whole = embeddings(
        encoding, frozenset({Output.DENSE}), dimensions=4, normalize=True, mapper=None
    ).dense
    assert whole is encoding.dense  # at the model's dimension: served as computed


def test_only_the_asked_heads_are_served_with_sparse_indices_mapped() -> None:
    mappers = SparseMappers("tokenizer", 1000)
    mapper = mappers.get(None, lambda: 10)
    result = embeddings(
        _encoding(), frozenset({Output.LEXICAL}), dimensions=None, normalize=True, mapper=mapper
    )
    assert result.dense is None and result.colbert is None
    assert result.prompt_tokens == 6
    assert result.sparse is not None
    assert result.sparse[0].indices.tolist() == [2, 9]  # ascending
    assert result.sparse[0].values.tolist() == [1.5, 0.5]


def test_one_mapper_per_mapping_and_the_vocabulary_asked_only_for_the_tokenizers() -> None:
    asked: list[str] = []

    def vocab_size() -> int:
        asked.append("vocab")
        return 250_002

    mappers = SparseMappers("tokenizer", 4096)
    hashed = mappers.get("hash", vocab_size)
    assert hashed.index_space == 4096 and not asked
    assert mappers.get("hash", vocab_size) is hashed
    tokenizer = mappers.get(None, vocab_size)  # the setting's mapping
    assert tokenizer.index_space == 250_002 and asked == ["vocab"]
    assert mappers.get("tokenizer", vocab_size) is tokenizer and asked == ["vocab"]
