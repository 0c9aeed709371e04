"""TEI-style tokens, decoding and bounded truncation from a Hugging Face fast tokenizer
(flag and infinity backends).

Callers run these on their tokenizer thread: a fast tokenizer is not safe to share. A long
request is tokenized in ``chunks`` (engine.budget's), one call each, so a short request's
call gets the thread between two of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from engine.budget import chunks
from engine.errors import InvalidInput, StartupError
from engine.types import Token

__all__ = ["PairTemplate", "chunks", "cut_for_truncation", "decode_ids", "tokens_of"]

# The first cut tried, in characters per token kept; ordinary text needs 3-6. Only a guess:
# a cut is kept only once checked, else doubled (see cut_for_truncation).
_FIRST_CUT_CHARS_PER_TOKEN = 8
# Words of the cut's end a kept token must stay clear of: the last word is cut, and the
# one before may be split differently by a pre-tokenizer that looks one character ahead.
_WORDS_CLEAR = 2


def cut_for_truncation(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], keep: int, *, from_left: bool
) -> list[str]:
    """Each text, or a cut of it whose first ``keep`` tokens (last, ``from_left``) are the
    full text's, so that truncating to ``keep`` gives the same ids from a bounded call.

    A cut is tried at ``keep`` x 8 characters and kept only when the tokenizer's own words
    (its pre-tokenizer's pieces) show every kept token clear of the cut's last two words:
    tokens are made word by word, so the cut cannot have changed them. Otherwise the cut
    doubles, up to the whole text; a text that defeats the guess (runs of spaces the
    normaliser folds, one long word, a tokenizer without words) costs its full length,
    which MAX_TEXT_CHARS bounds, and is never answered differently.
    """
    cut = list(texts)
    if not tokenizer.is_fast:  # no word ids to check a cut by
        return cut
    size = max(keep, 1) * _FIRST_CUT_CHARS_PER_TOKEN
    pending = [i for i, text in enumerate(texts) if len(text) > size]
    while pending:
        pieces = [texts[i][-size:] if from_left else texts[i][:size] for i in pending]
        encoded = tokenizer(pieces, add_special_tokens=False)
        unsettled = []
        for row, position in enumerate(pending):
            words = encoded.word_ids(row)
            if _clear_of_cut(words, keep, from_left):
                # Only to the word after the next one: the truncating call that follows
                # then makes about ``keep`` tokens, not the cut's.
                piece, nearest = pieces[row], words[-keep] if from_left else words[keep - 1]
                assert nearest is not None  # _clear_of_cut checked it
                if from_left:
                    cut[position] = piece[encoded.word_to_chars(row, nearest - 2).end :]
                else:
                    cut[position] = piece[: encoded.word_to_chars(row, nearest + 2).start]
            else:
                unsettled.append(position)
        size *= 2
        pending = [i for i in unsettled if len(texts[i]) > size]
    return cut


def _clear_of_cut(words: Sequence[int | None], keep: int, from_left: bool) -> bool:
    if len(words) <= keep or keep < 1:
        return False
    # The kept token nearest the cut, and the word the cut runs through.
    nearest, at_cut = (words[-keep], words[0]) if from_left else (words[keep - 1], words[-1])
    if nearest is None or at_cut is None:
        return False
    return abs(at_cut - nearest) >= _WORDS_CLEAR


def tokens_of(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, add_special_tokens: bool
) -> tuple[tuple[Token, ...], ...]:
    encoded = tokenizer(
        list(texts),
        add_special_tokens=add_special_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    rows: list[tuple[Token, ...]] = []
    for text, ids, offsets, special in zip(
        texts,
        encoded["input_ids"],
        encoded["offset_mapping"],
        encoded["special_tokens_mask"],
        strict=True,
    ):
        symbols = tokenizer.convert_ids_to_tokens(ids)
        # TEI reports byte offsets (what its Rust tokenizer counts); Python counts characters.
        byte_at = _byte_offsets(text)
        row: list[Token] = []
        for token_id, (start, stop), is_special, symbol in zip(
            ids, offsets, special, symbols, strict=True
        ):
            if is_special:
                row.append(Token(id=int(token_id), text=str(symbol), special=True))
            else:
                row.append(
                    Token(
                        id=int(token_id),
                        text=text[start:stop],
                        special=False,
                        start=byte_at[start],
                        stop=byte_at[stop],
                    )
                )
        rows.append(tuple(row))
    return tuple(rows)


def _byte_offsets(text: str) -> Sequence[int]:
    """The UTF-8 byte offset of each character offset, in one pass over ``text``."""
    if text.isascii():
        return range(len(text) + 1)
    return list(itertools.accumulate((len(char.encode()) for char in text), initial=0))


def decode_ids(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[Sequence[int]], skip_special_tokens: bool
) -> tuple[str, ...]:
    vocab = len(tokenizer)
    for row_index, row in enumerate(ids):
        for position, token_id in enumerate(row):
            if not 0 <= token_id < vocab:
                where = f"ids[{row_index}][{position}]"
                raise InvalidInput(
                    f"`{where}` is {token_id}; token ids run from 0 to {vocab - 1}", param=where
                )
    texts = tokenizer.batch_decode(
        [list(row) for row in ids], skip_special_tokens=skip_special_tokens
    )
    return tuple(str(text) for text in texts)


@dataclass(frozen=True, slots=True)
class PairTemplate:
    """Where a tokenizer puts its special tokens around a (query, document) pair: for
    XLM-RoBERTa ``<s> query </s></s> document </s>``, for BERT ``[CLS] q [SEP] d [SEP]``.

    Read once from the tokenizer's own pair encoding, because transformers 5 dropped
    ``build_inputs_with_special_tokens`` from its tokenizers-backed classes."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> PairTemplate:
        first, second = "query", "document"
        first_ids = list(tokenizer(first, add_special_tokens=False)["input_ids"])
        second_ids = list(tokenizer(second, add_special_tokens=False)["input_ids"])
        both = list(tokenizer(first, second)["input_ids"])
        start = _find(both, first_ids, 0)
        end = start + len(first_ids)
        later = _find(both, second_ids, end)
        return cls(
            prefix=tuple(both[:start]),
            middle=tuple(both[end:later]),
            suffix=tuple(both[later + len(second_ids) :]),
        )

    def join(self, query: Sequence[int], document: Sequence[int]) -> list[int]:
        return [*self.prefix, *query, *self.middle, *document, *self.suffix]

    @property
    def size(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def _find(haystack: Sequence[int], needle: Sequence[int], start: int) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if list(haystack[i : i + len(needle)]) == list(needle):
            return i
    raise StartupError("the tokenizer's pair encoding does not contain its parts")
