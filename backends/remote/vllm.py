"""vLLM's pooling runner (``vllm serve --runner pooling``, 0.32): one pooling task per instance.

A vLLM instance answers one pooling task, chosen at start-up (``--pooler-config
'{"task": ...}'``; ``ModelConfig.get_pooling_task`` in vllm/config/model.py), and
refuses the others with 400 (``ServingPooling._verify_pooling_task``,
vllm/entrypoints/pooling/pooling/serving.py). So each operation has its own
instance, at its own URL (REMOTE_EMBED_URL, REMOTE_SPARSE_URL, REMOTE_RERANK_URL),
and the probe asks each which task it serves:

- ``embed``: dense vectors from ``POST /v1/embeddings``;
- ``token_classify`` on bge-m3 served as ``BgeM3EmbeddingModel`` (``--hf-overrides``):
  ``relu(sparse_linear(h))`` per token, BOS and EOS left out (``BOSEOSFilter``,
  vllm/model_executor/layers/pooler/special.py), from ``POST /pooling``. The answer has
  no token ids, so the texts are tokenized first (``POST /tokenize``) and their ids
  sent to ``/pooling``: every weight belongs to an id by construction. The weights
  become lexical weights as the flag backend makes them (backends/flag/m3.py):
  special tokens dropped, weights > 0 only, the largest per token id;
- ``token_embed`` on the same model: ``colbert_linear(h)`` per token after BOS,
  L2-normalised (``pooler_for_token_embed``, vllm/model_executor/layers/pooler/
  tokwise/poolers.py): FlagEmbedding's ColBERT vectors;
- ``classify`` on a one-label cross-encoder: raw logits from ``POST /score`` with
  ``use_activation: false`` (vllm/entrypoints/pooling/scoring/protocol.py).

An instance serves lexical weights or ColBERT vectors, never both, nor either beside
dense vectors: a request for another head is Unavailable here, and the router passes
it to the next backend of the chain. Vectors travel as base64 little-endian float32
(exact, a quarter the bytes of decimals). A text over vLLM's ``max_model_len`` is
refused with 400 ("This model's maximum context length is ...", vllm/renderers/
params.py), which is the request's fault: InputTooLarge. Truncation (TRUNCATE) is
``truncate_prompt_tokens: -1``, the tokenizer's own, which keeps the special tokens
(the flag backend's); vLLM's ``truncation_side: left`` slices them off with the
text's start, so Left truncation is refused rather than sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Self

import msgspec
import numpy as np
from numpy.typing import NDArray

from backends.remote.answers import (
    Listed,
    base64_row,
    decoded,
    dense_matrix,
    expect_ok,
    expect_rows,
    failure,
    in_order,
)
from backends.remote.contract import Offer, ProbeFailed, Remote, RemoteChanged
from backends.remote.transport import Answer, Deadline, RemoteClient, together
from engine.errors import InputTooLarge, InvalidInput, Unavailable
from engine.settings import Settings
from engine.types import (
    ColbertMatrix,
    DenseMatrix,
    EncodeOptions,
    Encoding,
    ModelInfo,
    Operation,
    Output,
    Scores,
    Token,
    TokenWeights,
)

__all__ = ["VllmRemote"]

Task = Literal["embed", "token_classify", "token_embed", "classify"]

# Asked in this order; the first the instance answers is the one it serves.
_TASKS: tuple[Task, ...] = ("embed", "token_classify", "token_embed", "classify")
_OPERATION: dict[Task, Operation] = {
    "embed": Operation.EMBED,
    "token_classify": Operation.LEXICAL_COLBERT,
    "token_embed": Operation.LEXICAL_COLBERT,
    "classify": Operation.RERANK,
}
_OUTPUTS: dict[Task, frozenset[Output]] = {
    "embed": frozenset({Output.DENSE}),
    "token_classify": frozenset({Output.LEXICAL}),
    "token_embed": frozenset({Output.COLBERT}),
    "classify": frozenset(),
}
# Where each operation's instance is named (backends/remote/backend.py).
_URL_SETTING = {
    Operation.EMBED: "REMOTE_EMBED_URL",
    Operation.LEXICAL_COLBERT: "REMOTE_SPARSE_URL",
    Operation.RERANK: "REMOTE_RERANK_URL",
}


# What to start for an operation this instance does not serve.
_SERVE_HINT: dict[Operation, str] = {
    Operation.EMBED: '--pooler-config \'{"task": "embed"}\'',
    Operation.LEXICAL_COLBERT: '--hf-overrides \'{"architectures": ["BgeM3EmbeddingModel"]}\' '
    '--pooler-config \'{"task": "token_classify"}\' (lexical weights) or '
    '\'{"task": "token_embed"}\' (ColBERT)',
    Operation.RERANK: "a one-label cross-encoder (bge-reranker-v2-m3), task classify",
}
# Two texts of different lengths: a ColBERT answer tells BOS-less rows (bge-m3's head)
# from every token's row (a plain encoder's token_embed) only across two lengths.
_PROBE_TEXTS = ("dimension probe", "a longer text to probe the vectors of each token")
# vLLM's words for an input over max_model_len (vllm/renderers/params.py,
# TokenizeParams._text_len_check and _token_len_check), answered 400.
_TOO_LONG = re.compile(r"maximum context length is \d+ tokens")
# ServingPooling._verify_pooling_task: the instance now serves another task.
_OTHER_TASK = re.compile(r"switching the model's pooling_task|Unsupported task")
# vLLM takes any number of inputs a request; chunks of this many run concurrently and
# keep each answer's body bounded.
_MAX_BATCH = 256
# base64, little-endian float32 (vllm/entrypoints/pooling/base/protocol.py,
# EncodingRequestMixin): exact, and independent of the server's byte order.
_BASE64 = {"encoding_format": "base64", "embed_dtype": "float32", "endianness": "little"}
# The special tokens of bge-m3's (XLM-RoBERTa's) tokenizer that lexical weights leave
# out beside BOS and EOS (FlagEmbedding's unused_tokens: cls, eos, pad, unk); the probe
# finds their ids by tokenizing their text, which a tokenizer maps to the token itself.
_OTHER_SPECIALS = ("<pad>", "<unk>")


class _Card(msgspec.Struct):
    id: str
    max_model_len: int | None = None


class _Models(msgspec.Struct):
    data: list[_Card]


class _Version(msgspec.Struct):
    version: str


class _Tokenized(msgspec.Struct):
    count: int
    tokens: list[int]
    token_strs: list[str] | None = None


class _Embedding(msgspec.Struct):
    """A row of ``/v1/embeddings`` (vllm/entrypoints/pooling/embed/protocol.py), base64."""

    index: int
    embedding: str


class _Pooled(msgspec.Struct):
    """A row of ``/pooling`` (vllm/entrypoints/pooling/pooling/protocol.py), base64."""

    index: int
    data: str


class _Scored(msgspec.Struct):
    index: int
    score: float


_Embeddings = Listed[_Embedding]
_Pooling = Listed[_Pooled]
_ScoreList = Listed[_Scored]


class VllmRemote(Remote):
    kind = "vllm"
    name = "vLLM"

    def __init__(
        self, client: RemoteClient, model: str, max_model_len: int, *, truncate: bool
    ) -> None:
        super().__init__(client)
        self._model = model
        # 0: vLLM did not say; nothing is cut here then, and vLLM refuses what is too long.
        self._max_len = max_model_len
        self._truncate = truncate
        self._task: Task | None = None
        self._special_ids = np.zeros(0, dtype=np.int64)
        self._colbert_width = 0

    # -- probing ---------------------------------------------------------------------

    @classmethod
    async def probe(cls, client: RemoteClient, settings: Settings, deadline: Deadline) -> Self:
        models = await client.get("/v1/models", deadline)
        expect_ok(models)
        # The base model comes first, LoRA adapters after it (vllm/entrypoints/openai/
        # models/serving.py, show_available_models).
        cards = decoded(models, _Models).data
        if not cards:
            raise ProbeFailed("GET /v1/models lists no model")
        answer = await client.get("/version", deadline)
        expect_ok(answer)
        version = decoded(answer, _Version).version
        card = cards[0]
        remote = cls(client, card.id, card.max_model_len or 0, truncate=settings.truncate)
        task, why = await remote._find_task(deadline)
        if why:  # answers a task, but not as this service needs it
            task = None
        remote._task = task
        info = ModelInfo(card.id, card.max_model_len or 0, 0)
        models_served: dict[Operation, ModelInfo] = {}
        if task == "embed":
            dense, _ = await remote._embed(_PROBE_TEXTS[:1], True, deadline)
            models_served[Operation.EMBED] = ModelInfo(
                card.id, info.max_tokens, 0, dimension=int(dense.shape[1])
            )
        elif task == "token_classify":
            remote._special_ids = await remote._specials(deadline)
            models_served[Operation.LEXICAL_COLBERT] = info
        elif task == "token_embed":
            models_served[Operation.LEXICAL_COLBERT] = ModelInfo(
                card.id, info.max_tokens, 0, dimension=remote._colbert_width
            )
        elif task == "classify":
            models_served[Operation.RERANK] = info
        serving = f"it serves the pooling task {task}" if task else why
        offer = Offer.of(
            models_served,
            outputs=_OUTPUTS[task] if task else frozenset(),
            max_batch_size=_MAX_BATCH,
            options=frozenset({"normalize"}),
            refusals={
                "truncate_left": f"`truncation_direction`: Left is not available: the vLLM "
                f"at {client.url} cuts a long text's start together with its special "
                "tokens (truncation_side=left)",
            },
            version=version,
            missing={
                op: f"{serving}; a vLLM instance serves one task: start one with "
                f"{_SERVE_HINT[op]} and set {_URL_SETTING[op]} to it"
                for op in Operation
                if op not in models_served
            },
        )
        return remote._serving(offer)

    def describe(self) -> str:
        # The task says more than the operation: token_classify and token_embed are both
        # lexical_colbert.
        described = super().describe()
        return f"{described}, task {self._task}" if self._task else described

    async def _find_task(self, deadline: Deadline) -> tuple[Task | None, str]:
        """The task the instance serves, found by asking ``/pooling`` for each in turn
        (it refuses all but its own with 400), checked to be what this service needs;
        or None and why not."""
        for task in _TASKS:
            texts = list(_PROBE_TEXTS) if task == "token_embed" else list(_PROBE_TEXTS[:1])
            body = {"model": self._model, "input": texts, "task": task, **_BASE64}
            try:
                answer = await self.client.post("/pooling", body, deadline)
            except InvalidInput:
                continue
            rows = in_order(answer, decoded(answer, _Pooling).data, len(texts))
            sizes = [len(base64_row(answer, row.data)) for row in rows]
            return task, await self._unfit(task, texts, sizes, deadline)
        return None, (
            "it answers none of the pooling tasks embed, token_classify, token_embed, "
            "classify (bge-m3 served as BgeM3EmbeddingModel without --pooler-config serves "
            "embed&token_classify, which only an IO-processor plugin can ask for)"
        )

    async def _unfit(
        self, task: Task, texts: list[str], sizes: list[int], deadline: Deadline
    ) -> str:
        """Why the answer of ``task`` (``sizes``: the values of each text's row) is not what
        this service takes it for; "" when it is."""
        if task == "classify" and sizes[0] != 1:
            return f"it classifies into {sizes[0]} labels, and a reranker has one"
        if task in ("embed", "classify"):
            return ""
        tokens = [len(ids) for ids in await self._token_ids(texts, deadline, cut=False)]
        if task == "token_classify":
            if sizes[0] != tokens[0] - 2:
                return (
                    f"its token_classify gives {sizes[0]} values for {tokens[0]} tokens, not "
                    "bge-m3's one weight per token without BOS and EOS (serve the model as "
                    "BgeM3EmbeddingModel)"
                )
            return ""
        # bge-m3's ColBERT rows leave out BOS: the same width over both lengths only then.
        widths = {size // max(1, count - 1) for size, count in zip(sizes, tokens, strict=True)}
        if len(widths) != 1 or any(
            size % max(1, count - 1) for size, count in zip(sizes, tokens, strict=True)
        ):
            return (
                "its token_embed gives a vector for every token, not bge-m3's ColBERT vectors "
                "after BOS (serve the model as BgeM3EmbeddingModel)"
            )
        self._colbert_width = widths.pop()
        return ""

    async def _specials(self, deadline: Deadline) -> NDArray[np.int64]:
        """The ids lexical weights leave out: BOS and EOS (what ``/tokenize`` adds to an empty
        text), and pad and unk, where the tokenizer has them."""
        added, named = await together(
            [
                self._tokenize("", True, deadline),
                self._tokenize("".join(_OTHER_SPECIALS), False, deadline, strs=True),
            ]
        )
        ids = set(added.tokens)
        ids.update(
            token
            for token, text in zip(named.tokens, named.token_strs or (), strict=False)
            if text in _OTHER_SPECIALS
        )
        return np.array(sorted(ids), dtype=np.int64)

    # -- calls -----------------------------------------------------------------------

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
        deadline: Deadline,
    ) -> Encoding:
        if outputs == {Output.DENSE} and self._task == "embed":
            dense, tokens = await self._embed(texts, options.normalize, deadline)
            return Encoding(token_count=tokens, dense=dense)
        if outputs == {Output.LEXICAL} and self._task == "token_classify":
            return await self._lexical(texts, deadline)
        if outputs == {Output.COLBERT} and self._task == "token_embed":
            return await self._colbert(texts, deadline)
        raise Unavailable(
            f"the vLLM at {self.url} serves the pooling task {self._task}, which computes "
            "one kind of vector; not " + ", ".join(sorted(outputs))
        )

    async def score(self, query: str, documents: Sequence[str], deadline: Deadline) -> Scores:
        body = {
            "model": self._model,
            "queries": query,
            "documents": list(documents),
            # Raw logits: the sigmoid is the engine's to apply.
            "use_activation": False,
            **self._truncation(),
        }
        answer = await self._sent("/score", body, deadline)
        scored = decoded(answer, _ScoreList)
        ranks = in_order(answer, scored.data, len(documents))
        logits = np.array([rank.score for rank in ranks], dtype=np.float32)
        return Scores(logits=logits, token_count=scored.usage.prompt_tokens)

    async def token_ids(self, texts: Sequence[str], deadline: Deadline) -> tuple[list[int], ...]:
        # Uncut, as the flag backend's: the engine counts them against the limit.
        return await self._token_ids(texts, deadline, cut=False)

    async def tokens(
        self, texts: Sequence[str], add_special_tokens: bool, deadline: Deadline
    ) -> tuple[tuple[Token, ...], ...]:
        raise Unavailable(f"the vLLM at {self.url} gives no token offsets (its /tokenize)")

    async def decode(
        self, ids: Sequence[Sequence[int]], skip_special_tokens: bool, deadline: Deadline
    ) -> tuple[str, ...]:
        raise Unavailable(f"the vLLM at {self.url} cannot skip special tokens (its /detokenize)")

    async def _embed(
        self, texts: Sequence[str], normalize: bool, deadline: Deadline
    ) -> tuple[DenseMatrix, int]:
        body = {
            "model": self._model,
            "input": list(texts),
            **_BASE64,
            # False: the pooled CLS state, before the L2 normalisation (PoolerNormalize).
            "use_activation": normalize,
            **self._truncation(),
        }
        answer = await self._sent("/v1/embeddings", body, deadline)
        embeddings = decoded(answer, _Embeddings)
        rows = [
            base64_row(answer, row.embedding)
            for row in in_order(answer, embeddings.data, len(texts))
        ]
        return dense_matrix(
            answer, rows, len(texts), normalize=normalize
        ), embeddings.usage.prompt_tokens

    async def _lexical(self, texts: Sequence[str], deadline: Deadline) -> Encoding:
        ids = await self._token_ids(texts, deadline, cut=self._truncate)
        answer, rows, tokens = await self._pooled("token_classify", ids, deadline)
        lexical = []
        for token_ids, row in zip(ids, rows, strict=True):
            weights = base64_row(answer, row.data)
            # BOSEOSFilter leaves out the first and last token when they are BOS and EOS.
            if len(weights) == len(token_ids) - 2:
                aligned = np.asarray(token_ids[1:-1], dtype=np.int64)
            elif len(weights) == len(token_ids):
                aligned = np.asarray(token_ids, dtype=np.int64)
            else:
                raise failure(
                    answer, f"with {len(weights)} weights for a text of {len(token_ids)} tokens"
                )
            lexical.append(TokenWeights.of_tokens(aligned, weights, self._special_ids))
        return Encoding(
            token_count=tokens,
            lexical=tuple(lexical),
            text_tokens=tuple(len(row) for row in ids),
        )

    async def _colbert(self, texts: Sequence[str], deadline: Deadline) -> Encoding:
        answer, rows, tokens = await self._pooled("token_embed", list(texts), deadline)
        width = self._colbert_width
        matrices: list[ColbertMatrix] = []
        for row in rows:
            flat = base64_row(answer, row.data)
            if len(flat) == 0 or len(flat) % width:
                raise failure(answer, f"with {len(flat)} values, not rows of {width}")
            matrix = flat.reshape(-1, width)
            matrices.append(dense_matrix(answer, list(matrix), len(matrix)))
        # One row per token but BOS: a row missing or too many is a shifted answer.
        if sum(len(m) for m in matrices) != tokens - len(texts):
            raise failure(answer, f"with ColBERT rows that do not match its {tokens} tokens")
        return Encoding(token_count=tokens, colbert=tuple(matrices))

    async def _pooled(
        self, task: Task, inputs: Sequence[str] | Sequence[Sequence[int]], deadline: Deadline
    ) -> tuple[Answer, list[_Pooled], int]:
        """Each input's row in input order, the answer they came in and its tokens."""
        body: dict[str, object] = {
            "model": self._model,
            "input": [x if isinstance(x, str) else list(x) for x in inputs],
            "task": task,
            **_BASE64,
        }
        if task == "token_embed":  # token ids come cut already
            body.update(self._truncation())
        answer = await self._sent("/pooling", body, deadline)
        pooled = decoded(answer, _Pooling)
        return answer, in_order(answer, pooled.data, len(inputs)), pooled.usage.prompt_tokens

    async def _token_ids(
        self, texts: Sequence[str], deadline: Deadline, *, cut: bool
    ) -> tuple[list[int], ...]:
        """Each text's ids with special tokens (``/tokenize`` takes one text a request);
        ``cut``: as vLLM truncates a text to ``max_model_len`` (the tokenizer's truncation,
        which keeps the special tokens at both ends)."""
        answers = await together(self._tokenize(text, True, deadline) for text in texts)
        rows = [answer.tokens for answer in answers]
        limit = self._max_len
        if cut and limit >= 2:
            rows = [row if len(row) <= limit else row[: limit - 1] + row[-1:] for row in rows]
        return tuple(rows)

    async def _tokenize(
        self, text: str, special: bool, deadline: Deadline, *, strs: bool = False
    ) -> _Tokenized:
        body = {
            "model": self._model,
            "prompt": text,
            "add_special_tokens": special,
            "return_token_strs": strs,
        }
        answer = await self._sent("/tokenize", body, deadline)
        tokenized = decoded(answer, _Tokenized)
        expect_rows(answer, len(tokenized.tokens), tokenized.count)
        return tokenized

    def _truncation(self) -> dict[str, int]:
        # -1: to max_model_len, by the tokenizer (special tokens kept); unset: refused.
        return {"truncate_prompt_tokens": -1} if self._truncate else {}

    async def _sent(self, path: str, body: object, deadline: Deadline) -> Answer:
        """With vLLM's 400s told apart: an input over max_model_len is too large; a refused
        task means the instance was restarted serving another (probed again)."""
        try:
            return await self.client.post(path, body, deadline)
        except InvalidInput as exc:
            if _TOO_LONG.search(exc.message):
                raise InputTooLarge(exc.message, param=exc.param) from exc
            if _OTHER_TASK.search(exc.message):
                raise RemoteChanged(
                    f"the remote {self.url} no longer serves the pooling task {self._task} "
                    f"({exc.message}); probing it again"
                ) from exc
            raise
