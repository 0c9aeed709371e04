"""What one request may cost, checked before its forward passes and its answer are made.

Two budgets, each a 413 that names its setting, the limit and the estimate:

- ``MAX_REQUEST_TOKENS``: tokens the request's texts hold after truncation (what the
  forward passes cost, and the per-token state: ids, sparse weights, ColBERT rows);
- ``MAX_RESPONSE_BYTES``: the answer's size as JSON numbers, from the token counts
  (ColBERT: rows x dimension x bytes per value; sparse: an entry per token at most;
  ``/tokenize``: a token object per token).

A request whose worst case (every text at the token limit) fits both is not counted at
all; another is counted chunk by chunk on prefixes of its texts, stopping at the first
chunk past a budget, so a refusal costs at most a budget's worth of tokenizing.

Both budgets are per request; ``MAX_INFLIGHT_RESPONSE_BYTES`` bounds the process: the
answers of every request being computed at once, each reserved by its estimate before
its passes (an :class:`AnswerPool`), so clients together cannot push memory past it
either. One past it is a 429 with Retry-After, as a full queue is.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from engine.errors import InputTooLarge, Overloaded
from engine.settings import Settings
from engine.types import Output, Token

__all__ = [
    "COUNT_CHARS_PER_TOKEN",
    "TOKEN_JSON_BYTES",
    "AnswerPool",
    "Budget",
    "answer_bytes",
    "bounded_tokens",
    "chunks",
    "counted_prefix",
    "token_answer_bytes",
    "words_after",
]

# A float32 written as a JSON number, with its comma: the float64 it widens to prints 19-23
# characters (bge-m3: 21.7 KB per 1024-value ColBERT row, measured).
FLOAT_JSON_BYTES = 22
# A sparse entry, ``{"index":250001,"value":0.12345678}`` and its comma.
SPARSE_ENTRY_BYTES = 40
# A /tokenize token beside its text: ``{"id":250001,"text":"","special":false,
# "start":1234567,"stop":1234567}`` and its comma.
TOKEN_JSON_BYTES = 80
# Characters of a text counted for its tokens when it is truncated: ordinary text needs
# 3-6 a token; a prefix this long holds the limit's worth for any text but those whose
# characters the normaliser folds (runs of spaces), which then count low, never wrong.
COUNT_CHARS_PER_TOKEN = 12
# Characters per tokenizer call (counting here, tokenizing in a backend): a call holds every
# token of its texts (ids, offsets, strings: ~100 bytes each) until it returns, so a chunk
# keeps that to ~7 MB and well under 0.1 s, and other requests' calls run between two of them.
_CHUNK_CHARS = 65_536
_CHUNK_ITEMS = 256
_WORD_START = re.compile(r"\s+\S")


@dataclass(frozen=True, slots=True)
class Budget:
    max_tokens: int
    max_answer_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Budget:
        return cls(
            max_tokens=settings.max_request_tokens, max_answer_bytes=settings.max_response_bytes
        )

    def check(
        self,
        outputs: frozenset[Output],
        dimension: int,
        tokens: Sequence[int],
        *,
        field: str,
        texts: int,
        at_least: bool = False,
    ) -> None:
        """Refuses ``tokens`` (each text's, specials included) past either budget;
        ``at_least``: they are the first of ``texts`` counted so far."""
        total = sum(tokens)
        some = "at least " if at_least else ""
        if total > self.max_tokens:
            raise InputTooLarge(
                f"`{field}` holds {some}{total} tokens (after truncation) in {texts} texts; "
                f"the limit is {self.max_tokens} (MAX_REQUEST_TOKENS): send fewer or "
                "shorter texts per request",
                param=field,
            )
        size = answer_bytes(outputs, dimension, tokens)
        if size > self.max_answer_bytes:
            raise InputTooLarge(
                f"the answer to `{field}` would be {some}~{size} bytes ({_what(outputs)} for "
                f"{total} tokens); the limit is {self.max_answer_bytes} (MAX_RESPONSE_BYTES): "
                "send fewer or shorter texts per request",
                param=field,
            )

    def fits_worst_case(
        self, outputs: frozenset[Output], dimension: int, texts: int, limit: int
    ) -> bool:
        """Whether ``texts`` texts of ``limit`` tokens each fit both budgets."""
        worst = [limit] * texts
        return sum(worst) <= self.max_tokens and (
            answer_bytes(outputs, dimension, worst) <= self.max_answer_bytes
        )

    def check_tokens_answer(
        self, size: int, tokens: int, *, field: str, done: int, of: int
    ) -> None:
        """Refuses a /tokenize answer of ``size`` bytes and ``tokens`` tokens so far, for
        ``done`` of ``of`` texts (the estimate for all of them is named)."""
        whole = size * of // max(done, 1)
        if tokens > self.max_tokens:
            raise InputTooLarge(
                f"`{field}` holds at least {tokens} tokens ({done} of {of} texts counted); the "
                f"limit is {self.max_tokens} (MAX_REQUEST_TOKENS): send less text per request",
                param=field,
            )
        if size > self.max_answer_bytes:
            raise InputTooLarge(
                f"the tokens of `{field}` would be ~{whole} bytes as an answer (at least {size} "
                f"for {done} of {of} texts); the limit is {self.max_answer_bytes} "
                "(MAX_RESPONSE_BYTES): send less text per request",
                param=field,
            )


class AnswerPool:
    """The estimated answer bytes of the requests being computed, bounded process-wide.

    A request reserves its estimate before its first pass and gives it back once its
    answer is made (the handler then writes it out at once, and a client that does not
    read it is cut off after HTTP_WRITE_TIMEOUT_S). When the pool is empty any one
    request goes, however large (its own budget bounds it), so none is refused forever.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.in_use = 0

    @contextlib.contextmanager
    def reserved(self, size: int) -> Iterator[None]:
        if self.in_use and self.in_use + size > self._limit:
            raise Overloaded(
                f"the answers being computed would take ~{self.in_use + size} bytes with this "
                f"one (~{size}); the limit is {self._limit} (MAX_INFLIGHT_RESPONSE_BYTES): "
                "retry shortly, or send fewer texts per request",
                retry_after=1,
            )
        self.in_use += size
        try:
            yield
        finally:
            self.in_use -= size


def bounded_tokens(texts: Sequence[str], limit: int) -> list[int]:
    """Each text's tokens at most, uncounted: a token holds a character or is the word
    marker before one, plus the two specials; never past the limit."""
    return [min(limit, 2 * len(text) + 2) if limit else 2 * len(text) + 2 for text in texts]


def answer_bytes(outputs: frozenset[Output], dimension: int, tokens: Sequence[int]) -> int:
    """An answer's size as JSON numbers for texts of ``tokens`` tokens each."""
    size = 0
    if Output.DENSE in outputs:
        size += len(tokens) * dimension * FLOAT_JSON_BYTES
    if Output.LEXICAL in outputs:
        size += sum(tokens) * SPARSE_ENTRY_BYTES
    if Output.COLBERT in outputs:
        # One row per token after CLS.
        size += sum(max(count - 1, 0) for count in tokens) * dimension * FLOAT_JSON_BYTES
    return size


def token_answer_bytes(rows: Sequence[Sequence[Token]]) -> int:
    return sum(TOKEN_JSON_BYTES + len(token.text) for row in rows for token in row)


def _what(outputs: frozenset[Output]) -> str:
    return " + ".join(o for o in (Output.DENSE, Output.LEXICAL, Output.COLBERT) if o in outputs)


def counted_prefix(text: str, limit: int, *, from_left: bool) -> str:
    """The part of ``text`` counted for its tokens when truncated to ``limit``."""
    size = limit * COUNT_CHARS_PER_TOKEN
    if size <= 0 or len(text) <= size:
        return text
    return text[-size:] if from_left else text[:size]


def chunks(texts: Sequence[str]) -> list[slice]:
    """``texts`` in consecutive runs of at most ~_CHUNK_CHARS characters (a longer text alone)."""
    runs: list[slice] = []
    start = chars = 0
    for position, text in enumerate(texts):
        if position > start and (
            chars + len(text) > _CHUNK_CHARS or position - start >= _CHUNK_ITEMS
        ):
            runs.append(slice(start, position))
            start, chars = position, 0
        chars += len(text)
    if start < len(texts):
        runs.append(slice(start, len(texts)))
    return runs


def words_after(text: str) -> int:
    """How many words start in ``text`` after its first character (at most 2 are counted)."""
    found = 0
    for _ in _WORD_START.finditer(text):
        found += 1
        if found == 2:
            break
    return found
