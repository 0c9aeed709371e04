"""Length buckets: a batch that would be mostly padding runs as more than one pass."""

from __future__ import annotations

import random

import pytest

from backends.flag.batches import length_sorted_batches
from engine.padding import length_buckets


def padded(lengths: list[int], buckets: list[range]) -> int:
    return sum(lengths[b.start] * len(b) for b in buckets)


def test_similar_lengths_stay_one_pass() -> None:
    lengths = sorted((random.Random(1).randint(12, 30) for _ in range(64)), reverse=True)
    assert length_buckets(lengths) == [range(64)]


def test_one_long_text_among_short_ones_runs_apart() -> None:
    lengths = [500] + [10] * 31
    buckets = length_buckets(lengths)
    assert buckets == [range(0, 1), range(1, 32)]
    assert padded(lengths, buckets) == 500 + 310  # against 16,000 as one pass


def test_a_saving_below_the_minimum_is_not_worth_a_pass() -> None:
    # 300 tokens saved is most of the padding, but less than a pass's fixed cost.
    assert length_buckets([40, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10]) == [range(11)]
    assert length_buckets([40] + [10] * 10, min_tokens=100) == [range(1), range(1, 11)]


@pytest.mark.parametrize("seed", range(5))
def test_buckets_cover_every_row_once_in_order_and_never_pad_more(seed: int) -> None:
    rng = random.Random(seed)
    lengths = sorted(
        (rng.choice((rng.randint(5, 20), rng.randint(200, 512))) for _ in range(100)),
        reverse=True,
    )
    buckets = length_buckets(lengths)
    assert [i for b in buckets for i in b] == list(range(len(lengths)))
    assert all(len(b) > 0 for b in buckets)
    assert len(buckets) >= 2  # long and short texts: two widths at least
    assert padded(lengths, buckets) < padded(lengths, [range(len(lengths))])


def test_lengths_must_come_longest_first() -> None:
    with pytest.raises(ValueError, match="longest first"):
        length_buckets([1, 2])
    assert length_buckets([]) == []


def test_in_process_batches_split_a_mostly_padding_group() -> None:
    # One budget's worth (32 x 500 <= 16,384) but nearly all padding as one pass.
    lengths = [10] * 15 + [500] + [10] * 16
    batches = length_sorted_batches(lengths, max_tokens=16_384, max_items=64)
    assert batches == [[15], [i for i in range(32) if i != 15]]
