"""Packed passes run at a bounded set of sizes, close above the tokens they hold."""

from __future__ import annotations

from backends.flag.packing import packed_size


def test_sizes_cover_the_tokens_with_little_filler() -> None:
    for tokens in range(1, 20_000):
        size = packed_size(tokens)
        assert size >= tokens
        assert size - tokens < 8 if tokens <= 64 else size <= tokens * 17 / 16


def test_few_sizes_so_oneDNN_compiles_each_once() -> None:  # noqa: N802 - oneDNN's name
    sizes = {packed_size(tokens) for tokens in range(1, 16_385)}
    assert len(sizes) == 136
    assert packed_size(1) == 8 and packed_size(65) == 68 and packed_size(16_384) == 16_384
