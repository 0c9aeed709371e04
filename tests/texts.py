"""Texts the equality and concurrency tests share."""

from __future__ import annotations

from tests.fixtures.tiny_models import corpus

LONG_TEXT = " ".join(corpus(80, seed=9))  # well over the tiny models' 512 tokens

TEXTS: list[str] = [
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "Grüße aus München, 東京 and naïve café 🙂",
    "x",
    LONG_TEXT,
    *corpus(30, seed=3),
]

QUERY = "where is the cat in paris"
DOCUMENTS: list[str] = [
    "the cat sat on the mat in paris",
    "berlin music history",
    "a dog in the river",
    LONG_TEXT,
    *corpus(12, seed=5),
]
