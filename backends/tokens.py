"""TEI-style tokens and decoding from a Hugging Face fast tokenizer (flag and infinity backends).

Callers run these on their tokenizer thread: a fast tokenizer is not safe to share.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from engine.errors import InvalidInput
from engine.types import Token

__all__ = ["decode_ids", "tokens_of"]


def tokens_of(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], add_special_tokens: bool
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
