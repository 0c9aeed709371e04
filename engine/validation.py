"""Everything a client could get wrong, checked once, before any backend computes.

Texts (none, too many, nothing a model could read, too long), the options a request
departs on against what its chain honours, ``dimensions``, ``top_n``, each text's tokens
where truncation is off, and the request budgets of ``engine/budget.py``, counted on the
tokenizer only where the worst case does not fit. Each refusal is an engine error
(``engine/errors.py``) that names the request field it is about.

Kept apart from the operations (``engine/inference.py``) as TEI keeps its validation
(``core/src/tokenization.rs``) apart from inference (``core/src/infer.rs``): the engine
asks, in order, and a request that passes is one no backend refuses as malformed.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence

from engine.backend import Backend
from engine.budget import Budget, answer_bytes, bounded_tokens, chunks, counted_prefix
from engine.errors import InputTooLarge, InvalidInput
from engine.m3_score import DEFAULT_WEIGHTS
from engine.router import CHAIN_SETTING, Router
from engine.settings import Settings
from engine.types import DEFAULT_OPTIONS, EncodeOptions, M3Weights, ModelInfo, Operation, Output

__all__ = [
    "OPTION_FIELDS",
    "OptionFields",
    "Validator",
    "departures",
    "refusal",
    "tokenizer_operation",
    "visible",
]

OptionFields = Mapping[str, tuple[str, str]]
"""Each EncodeOptions field a backend may not honour: the request field that asks for it,
and what asking means (``{"truncate_left": ("truncation_direction", "Left (…)")}``)."""

OPTION_FIELDS: OptionFields = {
    "normalize": ("normalize", "false (vectors as pooled, not L2-normalised)"),
    "truncate_left": ("truncation_direction", "Left (a long text keeps its end)"),
    "colbert_max_tokens": ("colbert_max_tokens", "ColBERT rows pruned to those of largest norm"),
}

_INVISIBLE_TEXT = "is empty or whitespace (or only control and format characters)"
# A remote that has not said its dimension is estimated at bge-m3's.
_UNKNOWN_DIMENSION = 1024
# The backend that computes elsewhere (BackendName), where its own budgets apply.
_REMOTE = "remote"


class Validator:
    """The checks of the settings' limits and the budgets; those that count tokens ask
    the router's chain, as a call would."""

    def __init__(self, settings: Settings, router: Router, budget: Budget) -> None:
        self._settings = settings
        self._router = router
        self._budget = budget

    def texts(
        self, texts: Sequence[str], field: str, item: Callable[[int], str] | None = None
    ) -> None:
        """``item`` names the text at a position (default ``field[3]``)."""
        settings = self._settings
        name = item or (lambda position: f"{field}[{position}]")
        if len(texts) == 0:
            raise InvalidInput(f"`{field}` must not be empty", param=field)
        if len(texts) > settings.max_batch_size:
            raise InputTooLarge(
                f"`{field}` has {len(texts)} items; the limit is {settings.max_batch_size} "
                "(MAX_BATCH_SIZE)",
                param=field,
            )
        for position, text in enumerate(texts):
            if not visible(text):
                where = name(position)
                raise InvalidInput(f"`{where}` {_INVISIBLE_TEXT}", param=where)
            if len(text) > settings.max_text_chars:
                where = name(position)
                raise InputTooLarge(
                    f"`{where}` has {len(text)} characters; the limit is "
                    f"{settings.max_text_chars} (MAX_TEXT_CHARS)",
                    param=where,
                )

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None,
        max_tokens_per_doc: int | None,
    ) -> None:
        if not visible(query):
            raise InvalidInput(f"`query` {_INVISIBLE_TEXT}", param="query")
        if len(query) > self._settings.max_text_chars:
            raise InputTooLarge(
                f"`query` has {len(query)} characters; the limit is "
                f"{self._settings.max_text_chars} (MAX_TEXT_CHARS)",
                param="query",
            )
        self.texts(documents, "documents")
        if top_n is not None and top_n < 1:
            raise InvalidInput("`top_n` must be at least 1", param="top_n")
        if max_tokens_per_doc is not None and max_tokens_per_doc < 1:
            raise InvalidInput(
                "`max_tokens_per_doc` must be at least 1", param="max_tokens_per_doc"
            )

    def m3_score(
        self, query: str, documents: Sequence[str], weights: Sequence[float] | None
    ) -> M3Weights:
        """The query and documents as rerank's; ``weights`` (dense, sparse, ColBERT) as
        FlagEmbedding's ``weights_for_different_modes``, three, >= 0, their sum > 0
        (None: the defaults)."""
        self.rerank(query, documents, None, None)
        if weights is None:
            return DEFAULT_WEIGHTS
        if len(weights) != 3:
            raise InvalidInput(
                f"`weights` must be 3 numbers (dense, sparse, colbert), got {len(weights)}",
                param="weights",
            )
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) == 0:
            raise InvalidInput(
                f"`weights` must be finite and non-negative, and not all zero; got {list(weights)}",
                param="weights",
            )
        return M3Weights(dense=weights[0], sparse=weights[1], colbert=weights[2])

    def pairs(self, pairs: Sequence[tuple[str, str]], field: str | None) -> None:
        """``field`` names the pairs (``pairs[3].query``); None: one pair whose fields are
        ``query`` and ``passage``."""
        where = field or "pairs"
        if len(pairs) == 0:
            raise InvalidInput(f"`{where}` must not be empty", param=where)
        for part, key in enumerate(("query", "passage")):
            self.texts(
                [pair[part] for pair in pairs],
                where,
                functools.partial(_pair_field, field, key),
            )

    def ids(self, ids: Sequence[Sequence[int]]) -> None:
        if len(ids) == 0 or any(len(row) == 0 for row in ids):
            raise InvalidInput("`ids` must hold at least one token id per row", param="ids")
        if len(ids) > self._settings.max_batch_size:
            raise InputTooLarge(
                f"`ids` has {len(ids)} rows; the limit is {self._settings.max_batch_size} "
                "(MAX_BATCH_SIZE)",
                param="ids",
            )

    def dimensions(self, info: ModelInfo, dimensions: int) -> None:
        native = info.dimension
        if dimensions < 1 or (native is not None and dimensions > native):
            raise InvalidInput(
                f"`dimensions` must be between 1 and {native}, got {dimensions}",
                param="dimensions",
            )

    def options(
        self, operation: Operation, options: EncodeOptions, asked_as: OptionFields | None
    ) -> None:
        """A request no backend of the chain can honour is the client's to change: 422.
        ``asked_as``: how the request asked for an option, where not as TEI does."""
        wanted = departures(options)
        chain = self._router.chain(operation)
        if not wanted or any(wanted <= b.capabilities.options for b in chain):
            return
        fields = {**OPTION_FIELDS, **(asked_as or {})}
        # Named: an option no backend honours, else the first (each is honoured alone).
        option = next(
            (o for o in sorted(wanted) if all(o not in b.capabilities.options for b in chain)),
            min(wanted),
        )
        param, meaning = fields[option]
        reasons = "; ".join(
            f"the {b.name} backend: {b.capabilities.refusals.get(option, 'not supported')}"
            for b in chain
            if option not in b.capabilities.options
        )
        raise InvalidInput(
            f"`{param}`: {meaning} is not available from {CHAIN_SETTING[operation]} ({reasons})",
            param=param,
        )

    async def token_counts(
        self, operation: Operation, texts: Sequence[str], field: str
    ) -> list[int]:
        """Each text's token count, refused 413 at the first over the limit (counted in
        chunks: a long request stops at the chunk that holds it)."""

        async def counted(part: Sequence[str], backend: Backend) -> tuple[int, list[int]]:
            # The limit of the backend that counted: a chain's remote may differ from flag.
            limit = backend.model_info(operation).max_tokens
            return limit, [len(row) for row in await backend.token_ids(part)]

        counts: list[int] = []
        for run in chunks(texts):
            limit, part = await self._router.call(operation, functools.partial(counted, texts[run]))
            for position, count in enumerate(part, start=run.start):
                if limit and count > limit:
                    raise InputTooLarge(
                        f"`{field}[{position}]` has {count} tokens; the model takes at most "
                        f"{limit} and truncation is off (TRUNCATE, or the request's truncate)",
                        param=f"{field}[{position}]",
                    )
            counts.extend(part)
        return counts

    async def budget(
        self,
        info: ModelInfo | None,
        operation: Operation,
        texts: Sequence[str],
        outputs: frozenset[Output],
        *,
        field: str,
        from_left: bool,
        counts: Sequence[int] | None,
    ) -> int:
        """MAX_REQUEST_TOKENS and MAX_RESPONSE_BYTES, before any pass. A request that fits
        with every text at the token limit is not counted; another is counted on each
        text's first (last) limit x 12 characters, in chunks, and refused at the first chunk
        that crosses a budget. Returns the answer's estimated size (for the process's
        MAX_INFLIGHT_RESPONSE_BYTES): from the counts, else bounded by the characters.
        ``info`` None: no backend is up to say its limits, and the call that follows says
        why."""
        if info is None:
            return 0
        dimension = info.dimension or _UNKNOWN_DIMENSION
        budget = self._budget
        if counts is not None:
            budget.check(outputs, dimension, counts, field=field, texts=len(texts))
            return answer_bytes(outputs, dimension, counts)
        limit = info.max_tokens
        bound = min(
            answer_bytes(outputs, dimension, bounded_tokens(texts, limit)),
            budget.max_answer_bytes,
        )
        if limit and budget.fits_worst_case(outputs, dimension, len(texts), limit):
            return bound
        if self._router.serving(operation) == _REMOTE:
            # Counting would cost the remote a /tokenize round trip per chunk; a remote
            # bge-serve holds the same budgets and its 413 reaches the client as it is.
            return bound
        pieces = [counted_prefix(t, limit, from_left=from_left) for t in texts]
        counted: list[int] = []
        for run in chunks(pieces):
            rows = await self._router.call(operation, functools.partial(_ids, pieces[run]))
            counted.extend(min(len(row), limit) if limit else len(row) for row in rows)
            budget.check(
                outputs,
                dimension,
                counted,
                field=field,
                texts=len(texts),
                at_least=len(counted) < len(texts),
            )
        return answer_bytes(outputs, dimension, counted)

    async def rerank_budget(
        self,
        info: ModelInfo | None,
        documents: Sequence[str],
        query_tokens: Callable[[], Awaitable[int]],
    ) -> None:
        """MAX_REQUEST_TOKENS for the pairs, each at most the reranker's limit (``info``'s;
        None: no backend is up to say it, and the call that follows says why); counted by
        the embedding tokenizer (the same XLM-R one) where the worst case does not fit,
        the query by ``query_tokens``."""
        if info is None:
            return
        budget = self._budget
        limit = info.max_tokens
        router = self._router
        if (
            len(documents) * limit <= budget.max_tokens
            or router.serving(Operation.RERANK) == _REMOTE
        ):
            return
        if not router.operations & {Operation.EMBED, Operation.LEXICAL_COLBERT}:
            return  # nothing to count with; the reranker cuts each pair to its limit
        query = await query_tokens()
        pieces = [counted_prefix(d, limit, from_left=False) for d in documents]
        operation = tokenizer_operation(router.operations)
        counted: list[int] = []
        for run in chunks(pieces):
            rows = await router.call(operation, functools.partial(_ids, pieces[run]))
            counted.extend(min(query + len(row), limit) for row in rows)
            budget.check(
                frozenset(),
                0,
                counted,
                field="documents",
                texts=len(documents),
                at_least=len(counted) < len(documents),
            )


def tokenizer_operation(operations: frozenset[Operation]) -> Operation:
    """The operation whose chain tokenizes with the embedding tokenizer: embed where it
    is served, else sparse."""
    return Operation.EMBED if Operation.EMBED in operations else Operation.LEXICAL_COLBERT


def visible(text: str) -> bool:
    """Whether ``text`` has a character a model could read: a zero-width space, a NUL or a
    byte-order mark alone would all embed as the same empty text."""
    return any(
        not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf") for char in text
    )


def departures(options: EncodeOptions) -> frozenset[str]:
    """The EncodeOptions fields ``options`` sets off their defaults."""
    return frozenset(
        name for name in OPTION_FIELDS if getattr(options, name) != getattr(DEFAULT_OPTIONS, name)
    )


def refusal(backend: Backend, wanted: frozenset[str]) -> str:
    """Why ``backend`` cannot honour the options ``wanted``, from its capabilities."""
    missing = sorted(wanted - backend.capabilities.options)
    return "; ".join(backend.capabilities.refusals.get(o, f"{o} not supported") for o in missing)


def _ids(texts: Sequence[str], backend: Backend) -> Awaitable[tuple[list[int], ...]]:
    return backend.token_ids(texts)


def _pair_field(field: str | None, key: str, position: int) -> str:
    return key if field is None else f"{field}[{position}].{key}"
