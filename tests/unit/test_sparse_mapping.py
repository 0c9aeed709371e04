from __future__ import annotations

import hashlib

import numpy as np
import pytest

from engine.sparse_mapping import SparseMapper, hashed_index
from engine.types import TokenWeights


def seed_service_index(token_id: str, space: int) -> int:
    # bge_inference_service's mapping, written out as it was: key is the decimal id string.
    return int(hashlib.sha256(token_id.encode()).hexdigest()[:8], 16) % space


def weights(ids: list[int], values: list[float]) -> TokenWeights:
    return TokenWeights(
        token_ids=np.array(ids, dtype=np.int64), weights=np.array(values, dtype=np.float32)
    )


@pytest.mark.parametrize("token_id", [0, 5, 6, 2343, 250001])
@pytest.mark.parametrize("space", [1_048_576, 30_000, 7])
def test_hash_matches_seed_service(token_id: int, space: int) -> None:
    assert hashed_index(token_id, space) == seed_service_index(str(token_id), space)


def test_hash_known_value() -> None:
    # sha256("5") = ef2d127d...; 0xef2d127d % 2**20 = 0xd127d (the low 20 bits)
    assert hashed_index(5, 1_048_576) == 0xD127D


def test_tokenizer_mapping_is_identity_sorted() -> None:
    mapper = SparseMapper("tokenizer", 250_002)
    vector = mapper.map(weights([900, 12, 77], [0.5, 0.25, 1.5]))
    assert vector.indices.tolist() == [12, 77, 900]
    assert vector.values.tolist() == [0.25, 1.5, 0.5]
    assert vector.values.dtype == np.float32


def test_hash_mapping_unique_ascending_and_collisions_add() -> None:
    mapper = SparseMapper("hash", 1)  # every id lands on index 0
    vector = mapper.map(weights([3, 9, 27], [0.5, 0.25, 1.0]))
    assert vector.indices.tolist() == [0]
    assert vector.values.tolist() == pytest.approx([1.75])


def test_hash_mapping_matches_per_token_formula() -> None:
    ids = list(range(0, 5000, 7))
    values = [float(i % 13 + 1) for i in range(len(ids))]
    vector = SparseMapper("hash", 4096).map(weights(ids, values))
    expected: dict[int, float] = {}
    for token_id, value in zip(ids, values, strict=True):
        index = seed_service_index(str(token_id), 4096)
        expected[index] = expected.get(index, 0.0) + value
    assert vector.indices.tolist() == sorted(expected)
    assert vector.values.tolist() == pytest.approx([expected[i] for i in sorted(expected)])
    assert np.all(np.diff(vector.indices) > 0)


def test_empty_weights_give_empty_vector() -> None:
    vector = SparseMapper("hash", 1_048_576).map(weights([], []))
    assert vector.indices.size == 0
    assert vector.values.size == 0
