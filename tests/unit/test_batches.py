from __future__ import annotations

import random

import pytest

from backends.flag.batches import length_sorted_batches


@pytest.mark.parametrize("seed", range(5))
def test_every_position_once_within_budget(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(200)]
    batches = length_sorted_batches(lengths, max_tokens=1024, max_items=16)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 16
        assert len(batch) * max(lengths[i] for i in batch) <= 1024
    # longest first, so padding stays small
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_text_over_budget_gets_its_own_batch() -> None:
    batches = length_sorted_batches([10, 5000, 10], max_tokens=100, max_items=8)
    assert batches[0] == [1]
    assert sorted(batches[1]) == [0, 2]
