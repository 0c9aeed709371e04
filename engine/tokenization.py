"""The embedding tokenizer's operations: ids, tokens with their offsets, decoding, and
texts cut to a number of tokens.

Kept apart from the encoding and scoring operations (``engine/inference.py``): they run
no forward pass, so their texts go to the chain in chunks and the answer's budget (a
token object per token against MAX_RESPONSE_BYTES) is checked as each chunk comes back,
where an encoding's is estimated before its passes. bge-m3 and bge-reranker-v2-m3 share
XLM-R's tokenizer, so the embedding chain's counts and cuts for the reranker too.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Sequence

from engine.backend import Backend
from engine.budget import (
    TOKEN_JSON_BYTES,
    AnswerPool,
    Budget,
    bounded_tokens,
    chunks,
    counted_prefix,
    token_answer_bytes,
    words_after,
)
from engine.health import Readiness
from engine.router import Router
from engine.types import Operation, Token
from engine.validation import Validator, tokenizer_operation

__all__ = ["Tokenizer"]


class Tokenizer:
    """The tokenizer of the chain that embeds (else the sparse one), behind the same
    readiness, checks and answer pool as every other operation."""

    def __init__(
        self,
        router: Router,
        readiness: Readiness,
        checks: Validator,
        budget: Budget,
        answers: AnswerPool,
    ) -> None:
        self._router = router
        self._readiness = readiness
        self._checks = checks
        self._budget = budget
        self._answers = answers

    async def tokens(
        self, texts: Sequence[str], *, add_special_tokens: bool, field: str
    ) -> tuple[tuple[Token, ...], ...]:
        """Each text's tokens, ids, text and byte offsets, asked for in chunks; past
        MAX_REQUEST_TOKENS or MAX_RESPONSE_BYTES (~80 bytes a token as an answer) it stops
        at the chunk that crossed and answers 413."""
        operation = self._ready(texts, field)
        rows: list[tuple[Token, ...]] = []
        size = count = 0
        with self._answers.reserved(self._answer_bound(texts)):
            for run in chunks(texts):
                part = await self._router.call(
                    operation,
                    functools.partial(_tokens, texts[run], add_special_tokens=add_special_tokens),
                )
                rows.extend(part)
                size += token_answer_bytes(part)
                count += sum(len(row) for row in part)
                self._budget.check_tokens_answer(
                    size, count, field=field, done=run.stop, of=len(texts)
                )
        return tuple(rows)

    async def tokenize(self, texts: Sequence[str], *, field: str) -> tuple[list[int], ...]:
        """Each text's token ids (special tokens included, after truncation), asked for in
        chunks; past MAX_REQUEST_TOKENS it stops at the chunk that crossed and answers 413."""
        operation = self._ready(texts, field)
        rows: list[list[int]] = []
        count = 0
        with self._answers.reserved(self._answer_bound(texts)):
            for run in chunks(texts):
                part = await self._router.call(operation, functools.partial(_ids, texts[run]))
                rows.extend(part)
                count += sum(len(row) for row in part)
                self._budget.check_tokens_answer(
                    0, count, field=field, done=run.stop, of=len(texts)
                )
        return tuple(rows)

    async def decode(
        self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool
    ) -> tuple[str, ...]:
        operation = tokenizer_operation(self._router.operations)
        self._readiness.check(operation)
        self._checks.ids(ids)
        return await self._router.call(
            operation, lambda b: b.decode(ids, skip_special_tokens=skip_special_tokens)
        )

    async def cut_to_tokens(
        self, texts: Sequence[str], max_tokens: int, *, from_start: bool, field: str
    ) -> list[str]:
        """Each text cut to its first (``from_start``: last) ``max_tokens`` tokens, special
        tokens not counted.

        A long text is tokenized by its first (last) ``max_tokens`` x 12 characters, and that
        cut is kept only where two words lie between the last kept token and the cut (the
        BGE tokenizers make tokens word by word, so the cut did not change them); otherwise
        the whole text is tokenized, so a text is never cut differently."""
        pieces = [counted_prefix(t, max_tokens, from_left=from_start) for t in texts]
        rows = await self.tokens(pieces, add_special_tokens=False, field=field)
        cut: list[str] = []
        for text, piece, row in zip(texts, pieces, rows, strict=True):
            kept = _kept(piece, row, max_tokens, from_start=from_start, whole=piece == text)
            if kept is None:
                (row,) = await self.tokens([text], add_special_tokens=False, field=field)
                kept = _kept(text, row, max_tokens, from_start=from_start, whole=True)
            cut.append(text if kept is None else kept)
        return cut

    def _answer_bound(self, texts: Sequence[str]) -> int:
        """A tokens answer's size at most, uncounted (for MAX_INFLIGHT_RESPONSE_BYTES)."""
        tokens = sum(bounded_tokens(texts, 0))
        return min(tokens * TOKEN_JSON_BYTES, self._budget.max_answer_bytes)

    def _ready(self, texts: Sequence[str], field: str) -> Operation:
        operation = tokenizer_operation(self._router.operations)
        self._readiness.check(operation)
        self._checks.texts(texts, field)
        return operation


def _tokens(
    texts: Sequence[str], backend: Backend, *, add_special_tokens: bool
) -> Awaitable[tuple[tuple[Token, ...], ...]]:
    return backend.tokens(texts, add_special_tokens=add_special_tokens)


def _ids(texts: Sequence[str], backend: Backend) -> Awaitable[tuple[list[int], ...]]:
    return backend.token_ids(texts)


def _kept(
    text: str, row: Sequence[Token], max_tokens: int, *, from_start: bool, whole: bool
) -> str | None:
    """``text`` cut to ``row``'s first (last) ``max_tokens`` tokens; None where ``text`` is a
    cut that may have changed them (fewer than two words between them and its end)."""
    if len(row) <= max_tokens:
        return text if whole else None
    token = row[-max_tokens] if from_start else row[max_tokens - 1]
    at = token.start if from_start else token.stop
    if at is None:
        return text if whole else None
    data = text.encode()
    kept, rest = (data[at:], data[:at]) if from_start else (data[:at], data[at:])
    if not whole and words_after(rest.decode(errors="ignore")) < 2:
        return None
    return kept.decode()
