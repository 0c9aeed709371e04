"""A fake Text Embeddings Inference 1.9.3, written from its router's source, for the remote backend.

TEI cannot run on the test machines, so this stands in for it. Its rules come from TEI's own code
at tag v1.9.3, not from the OpenAPI document alone (which disagrees with the code in places: it
documents a batch over ``max_client_batch_size`` as 413, the code answers 422). Each rule names
the function it comes from:

- ``router/src/http/server.rs``: the handlers (``embed``, ``embed_sparse``, ``embed_all``,
  ``rerank``, ``predict``, ``similarity``, ``tokenize``, ``decode``, ``health``), the routes
  ``run`` mounts (``POST /`` and ``/invocations`` by model type), and ``From<&ErrorType> for
  StatusCode`` (Empty 400, Validation and Tokenizer 422, Backend 424, Overloaded 429, Unhealthy
  503);
- ``router/src/http/types.rs``: the request shapes (``Input``, ``PredictInput``, ``InputIds``, ...)
  and their defaults;
- ``core/src/infer.rs``: the model-type checks (``embed``, ``embed_sparse``, ``embed_all``,
  ``embed_pooled``, ``predict``) and the concurrency permits (``try_acquire_permit``);
- ``core/src/tokenization.rs``: ``encode``/``tokenize``/``decode`` (empty inputs),
  ``tokenize_input`` (the character limit), ``encode_input`` (the token limit);
- ``core/src/lib.rs``: the error texts (``Input validation error: ...``, ``Backend error: ...``,
  ``Model is overloaded``);
- axum 0.7 (TEI's HTTP framework): bodies its ``Json`` extractor refuses (415 without a JSON
  content type, 400 for bad JSON, 422 for JSON of the wrong shape, 413 over ``payload_limit``),
  as plain text, before a handler runs; 404 and 405 with empty bodies; 401 from the API-key layer.

The model is a deterministic function of the text (``vector``, ``sparse``, ``logit``, ``tokens``):
a word is a token, ``<s>`` and ``</s>`` wrap a text, ``<s> a </s></s> b </s>`` a pair. So a test
can compute what a correct client must get back. Faults (errors, garbage, short answers, dropped
connections, delays) can be injected while it runs. ``/v1/embeddings`` and ``/vertex`` are not
served (404): nothing here calls them.

Two ways to mount it: ``respx.route(host=...).mock(side_effect=fake.respx_async_side_effect)``
for an in-process client, or ``with serve(fake) as url:`` for a real loopback HTTP/1.1 server
that another process (a ``bge-serve`` subprocess) can reach.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import http.server
import json
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
from jsonschema.exceptions import ValidationError

from tests import contract

Kind = Literal["embedding", "splade", "reranker", "classifier"]
ErrorType = Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]
FaultKind = Literal["status", "malformed", "short", "wrong_shape", "drop"]
Direction = Literal["Left", "Right"]

VERSION = "1.9.3"
DEFAULT_MODELS: dict[str, str] = {
    "embedding": "BAAI/bge-m3",
    "splade": "naver/splade-v3",
    "reranker": "BAAI/bge-reranker-v2-m3",
    "classifier": "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
}
CLASSIFIER_LABELS = ("NEGATIVE", "POSITIVE")
# naver/splade-v3 is a BERT model: its sparse indices live in BERT's vocabulary.
SPARSE_VOCAB = 30522
# XLM-RoBERTa's special tokens, the ones bge-m3 and bge-reranker add.
SPECIAL_IDS: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
BOS_ID, EOS_ID = SPECIAL_IDS["<s>"], SPECIAL_IDS["</s>"]
# Word ids are hashed into XLM-R's vocabulary size, past the special tokens.
VOCAB = 250002
# core/src/tokenization.rs, MAX_CHAR_MULTIPLIER: inputs longer than this many characters per
# allowed token are refused (or cut, when truncating) before they are tokenized.
MAX_CHAR_MULTIPLIER = 250

# router/src/http/server.rs, `impl From<&ErrorType> for StatusCode`.
STATUS_OF_ERROR_TYPE: dict[ErrorType, int] = {
    "Unhealthy": 503,
    "Backend": 424,
    "Overloaded": 429,
    "Tokenizer": 422,
    "Validation": 422,
    "Empty": 400,
}
# The error type Fault.status gives a code when none is named.
DEFAULT_ERROR_TYPE: dict[int, ErrorType] = {
    400: "Empty",
    422: "Validation",
    424: "Backend",
    429: "Overloaded",
    503: "Unhealthy",
}
# The POST routes and the OpenAPI request schema each body is checked against.
REQUEST_SCHEMAS: dict[str, str] = {
    "/embed": "EmbedRequest",
    "/embed_sparse": "EmbedSparseRequest",
    "/embed_all": "EmbedAllRequest",
    "/rerank": "RerankRequest",
    "/predict": "PredictRequest",
    "/similarity": "SimilarityRequest",
    "/tokenize": "TokenizeRequest",
    "/decode": "DecodeRequest",
}
# router/src/http/server.rs, `run`: the routes and their methods. `/` is both a health check
# (GET) and the model type's own route (POST), like `/invocations` (AWS SageMaker's).
GET_ROUTES = frozenset({"/info", "/health", "/", "/ping", "/metrics"})
POST_ROUTES = frozenset({*REQUEST_SCHEMAS, "/", "/invocations"})
# `run`'s public routes skip the API-key layer; every other route is behind it.
PUBLIC_GET_ROUTES = frozenset({"/health", "/", "/ping", "/metrics"})
# The object a ``wrong_shape`` fault wraps a well-formed answer in, per route.
WRONG_SHAPE_KEYS: dict[str, str] = {
    "/embed": "embeddings",
    "/embed_sparse": "embeddings",
    "/embed_all": "embeddings",
    "/rerank": "results",
    "/predict": "predictions",
    "/similarity": "similarities",
    "/tokenize": "tokens",
    "/decode": "texts",
}
MALFORMED_BODY = b'{"not json'
JSON_HEADERS: dict[str, str] = {"content-type": "application/json"}
TEXT_HEADERS: dict[str, str] = {"content-type": "text/plain; charset=utf-8"}

Answer = tuple[int, dict[str, str], bytes]


class ConnectionDropped(Exception):
    """Raised by ``FakeTEI.respond`` when a ``drop`` fault says to answer nothing."""


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour; build it with the class methods."""

    kind: FaultKind
    code: int = 200
    error_type: ErrorType | None = None
    message: str = ""
    retry_after: int | None = None

    @classmethod
    def status(
        cls,
        code: int,
        error_type: ErrorType | None = None,
        message: str = "injected fault",
        retry_after: int | None = None,
    ) -> Fault:
        """Answer ``code`` with TEI's error body; the error type defaults to TEI's for ``code``."""
        if error_type is None:
            if code not in DEFAULT_ERROR_TYPE:
                raise ValueError(f"TEI has no error type for status {code}: name one")
            error_type = DEFAULT_ERROR_TYPE[code]
        return cls(
            "status", code=code, error_type=error_type, message=message, retry_after=retry_after
        )

    @classmethod
    def malformed(cls) -> Fault:
        """200 with a body that is not JSON."""
        return cls("malformed")

    @classmethod
    def short(cls) -> Fault:
        """The correct answer less its last row: one vector, rank or token list too few."""
        return cls("short")

    @classmethod
    def wrong_shape(cls) -> Fault:
        """The correct answer wrapped in an object where TEI sends a bare array."""
        return cls("wrong_shape")

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without answering (respx: raise ``httpx.RemoteProtocolError``)."""
        return cls("drop")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it; header names are lower case."""

    method: str
    path: str
    headers: dict[str, str]
    # The parsed JSON body; None when there was no body or it was not JSON.
    json: Any
    body: bytes


class _Rejected(Exception):
    """TEI's ``ErrorResponse``: ``{"error", "error_type"}`` with the type's status."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message

    def answer(self) -> Answer:
        body = _error_body(self.error_type, self.message)
        return STATUS_OF_ERROR_TYPE[self.error_type], dict(JSON_HEADERS), body


class _Plain(Exception):
    """A refusal axum makes before a handler runs: a status and a plain-text (or empty) body."""

    def __init__(self, status: int, text: str = "", headers: Mapping[str, str] = TEXT_HEADERS):
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = dict(headers) if text else {}

    def answer(self) -> Answer:
        return self.status, dict(self.headers), self.text.encode()


def _validation(message: str) -> _Rejected:
    # core/src/lib.rs: TextEmbeddingsError::Validation displays as "Input validation error: ...".
    return _Rejected("Validation", f"Input validation error: {message}")


def _empty(message: str) -> _Rejected:
    # core/src/lib.rs: TextEmbeddingsError::Empty displays as "Input validation error: ..." too.
    return _Rejected("Empty", f"Input validation error: {message}")


def _backend(message: str) -> _Rejected:
    # core/src/lib.rs: TextEmbeddingsError::Backend(BackendError::Inference) displays so.
    return _Rejected("Backend", f"Backend error: {message}")


def _overloaded() -> _Rejected:
    # core/src/infer.rs, try_acquire_permit: TextEmbeddingsError::Overloaded.
    return _Rejected("Overloaded", "Model is overloaded")


def _batch_too_large(size: int, limit: int) -> _Rejected:
    # router/src/http/server.rs, every batch handler: the error names no prefix.
    return _Rejected("Validation", f"batch size {size} > maximum allowed batch size {limit}")


class _DataError(Exception):
    """JSON of the wrong shape for the handler's request type (serde's words, no position)."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path}: {what}" if path else what)


def _seed(*parts: str) -> int:
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _error_body(error_type: str, message: str) -> bytes:
    return json.dumps({"error": message, "error_type": error_type}).encode()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_u32_list(value: object) -> bool:
    return isinstance(value, list) and all(_is_int(v) and 0 <= v < 2**32 for v in value)


def _sigmoid(logit: float) -> float:
    value = np.float32(logit)
    return float(np.float32(1.0) / (np.float32(1.0) + np.exp(-value)))


# ---- request fields, as serde reads TEI's request types (router/src/http/types.rs) ------------


def _object(body: object, type_name: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        kind = "sequence" if isinstance(body, list) else type(body).__name__
        raise _DataError("", f"invalid type: {kind}, expected struct {type_name}")
    return body


def _required(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise _DataError("", f"missing field `{name}`")
    return body[name]


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    """A ``bool`` field with ``#[serde(default)]``: absent is the default, null is refused."""
    if name not in body:
        return default
    value = body[name]
    if not isinstance(value, bool):
        raise _DataError(name, f"invalid type: {value!r}, expected a boolean")
    return value


def _optional_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _DataError(name, f"invalid type: {value!r}, expected a boolean")
    return value


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _DataError(name, f"invalid type: {value!r}, expected a string")
    return value


def _optional_usize(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and not (_is_int(value) and value >= 0):
        raise _DataError(name, f"invalid value: {value!r}, expected usize")
    return value


def _direction(body: dict[str, Any]) -> Direction:
    """``TruncationDirection``: ``Left``/``left`` or ``Right``/``right``, default Right."""
    value = body.get("truncation_direction", "Right")
    if value in ("Left", "left"):
        return "Left"
    if value in ("Right", "right"):
        return "Right"
    raise _DataError(
        "truncation_direction", f"unknown variant `{value}`, expected `Left` or `Right`"
    )


# An input as TEI's `InputType` reads it: a string, or token ids.
Item = str | list[int]


def _input(body: dict[str, Any]) -> tuple[bool, list[Item]]:
    """``Input`` (untagged ``Single(InputType) | Batch(Vec<InputType>)``): (is a batch, items).

    serde tries ``Single`` first, so ``[]`` and ``[1, 2]`` are one input of token ids.
    """
    value = _required(body, "inputs")
    if isinstance(value, str) or _is_u32_list(value):
        return False, [value]
    if isinstance(value, list) and all(isinstance(v, str) or _is_u32_list(v) for v in value):
        return True, list(value)
    raise _DataError("inputs", "data did not match any variant of untagged enum Input")


def _strings(body: dict[str, Any], name: str) -> list[str]:
    value = _required(body, name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _DataError(name, "invalid type, expected a sequence of strings")
    return value


# A sequence /predict scores: one text, or a pair.
Sequence = tuple[str] | tuple[str, str]


def _predict_input(body: dict[str, Any]) -> tuple[bool, list[Sequence]]:
    """``PredictInput``'s visitor: ``"a"``, ``["a", "b"]`` (one pair), or a batch of
    ``[["a"], ["a", "b"], ...]``; any other length is ``invalid length``."""
    value = _required(body, "inputs")
    expecting = (
        "a string, a pair of strings [string, string] or a batch of mixed strings and pairs "
        "[[string], [string, string], ...]"
    )
    if isinstance(value, str):
        return False, [(value,)]
    if not isinstance(value, list) or not value:
        raise _DataError("inputs", f"invalid length 0, expected {expecting}")
    if isinstance(value[0], str):
        if len(value) > 2:
            raise _DataError("inputs", f"invalid length 3, expected {expecting}")
        if not all(isinstance(v, str) for v in value):
            raise _DataError("inputs", "invalid type: sequence, expected a string")
        return False, [(value[0],) if len(value) == 1 else (value[0], value[1])]
    batch: list[Sequence] = []
    for row in value:
        if not isinstance(row, list) or not all(isinstance(v, str) for v in row):
            raise _DataError("inputs", "invalid type, expected a sequence of strings")
        if len(row) not in (1, 2):
            raise _DataError("inputs", f"invalid length {len(row)}, expected {expecting}")
        batch.append((row[0],) if len(row) == 1 else (row[0], row[1]))
    return True, batch


# ---- the plan of one request: what it needs of the queue, then the work -----------------------


@dataclass(frozen=True)
class _Plan:
    """A request that passed the handler's checks: the permits it takes (``try_acquire_permit``,
    one per input), then the work that answers it (which may still refuse one input)."""

    permits: int
    run: Callable[[], Answer]


@dataclass(frozen=True)
class _Encoded:
    """One input as the model runs it (``ValidEncoding``): its token count, and the text(s)
    that seed the answer (the input itself, or what truncation kept of it)."""

    tokens: int
    seeds: tuple[str, ...]


class FakeTEI:
    """TEI's HTTP behaviour for one served model, with recorded traffic and injectable faults.

    Attributes tests read or set while it runs (all guarded by one lock where it matters):
    ``requests``, ``contract_violations``, ``answers_by_path``, ``delay_s`` (every POST answer
    waits this long, holding its permits), ``faults`` (consumed one per POST, in order),
    ``fault`` (applied to every POST while set; ``faults`` go first), ``healthy`` and
    ``strip_headers`` (answers lose TEI's ``x-compute-*`` headers, as behind a proxy that drops
    them).
    """

    def __init__(
        self,
        *,
        kind: Kind = "embedding",
        model_id: str | None = None,
        dimension: int = 8,
        max_client_batch_size: int = 32,
        max_input_length: int = 512,
        max_concurrent_requests: int = 512,
        auto_truncate: bool = True,
        payload_limit: int = 2_000_000,
        api_key: str | None = None,
        prompts: Mapping[str, str] | None = None,
        task: str | None = None,
    ) -> None:
        # Each default is TEI 1.9.3's (router/src/main.rs): auto-truncate on, 32 inputs a
        # request, 512 concurrent inputs, 2 MB bodies.
        self.kind: Kind = kind
        self.model_id = model_id if model_id is not None else DEFAULT_MODELS[kind]
        self.dimension = dimension
        self.max_client_batch_size = max_client_batch_size
        self.max_input_length = max_input_length
        self.max_concurrent_requests = max_concurrent_requests
        self.auto_truncate = auto_truncate
        self.payload_limit = payload_limit
        self.api_key = api_key
        self.prompts = dict(prompts) if prompts is not None else None
        # The TASK environment variable: "sentence-similarity" points `POST /` at /similarity.
        self.task = task
        self.requests: list[RecordedRequest] = []
        self.contract_violations: list[str] = []
        self.answers_by_path: collections.Counter[str] = collections.Counter()
        self.delay_s: float = 0.0
        self.faults: list[Fault] = []
        self.fault: Fault | None = None
        self.healthy = True
        self.strip_headers = False
        self.permits_in_use = 0
        self._vocabulary: dict[int, str] = {}
        self._lock = threading.Lock()

    # ---- the deterministic model -------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The body of ``GET /info`` (router/src/lib.rs, ``Info``)."""
        model_type: dict[str, Any]
        if self.kind in ("reranker", "classifier"):
            labels = ("LABEL_0",) if self.kind == "reranker" else CLASSIFIER_LABELS
            classifier = {
                "id2label": {str(i): label for i, label in enumerate(labels)},
                "label2id": {label: i for i, label in enumerate(labels)},
            }
            model_type = {self.kind: classifier}
        else:
            pooling = "splade" if self.kind == "splade" else "cls"
            model_type = {"embedding": {"pooling": pooling}}
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_dtype": "float16",
            "model_type": model_type,
            "served_model_name": self.model_id,
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_input_length": self.max_input_length,
            "max_batch_tokens": 16384,
            "max_batch_requests": None,
            "max_client_batch_size": self.max_client_batch_size,
            "auto_truncate": self.auto_truncate,
            "tokenization_workers": 4,
            "version": VERSION,
            "sha": None,
            "docker_label": None,
        }

    def vector(
        self, text: str, normalize: bool = True, dimensions: int | None = None
    ) -> list[float]:
        """The embedding ``/embed`` answers for ``text``: float32 values, unit length by default.

        ``dimensions`` keeps the leading values before normalising, as TEI's Matryoshka
        truncation does (core/src/infer.rs, ``embed_pooled``).
        """
        if self.kind == "splade":
            # A SPLADE model's pooled embedding is its sparse vector, written out densely.
            raw = np.zeros(SPARSE_VOCAB, dtype=np.float32)
            for index, weight in self.sparse(text):
                raw[index] = weight
        else:
            rng = np.random.default_rng(_seed("vector", text))
            raw = rng.standard_normal(self.dimension).astype(np.float32)
            # Unnormalised vectors get a length far from 1 so a client that drops `normalize`
            # shows.
            raw *= np.float32(rng.uniform(2.0, 8.0))
        if dimensions is not None:
            raw = raw[:dimensions]
        if normalize:
            raw = raw * np.float32(1.0 / math.sqrt(float(np.sum(raw.astype(np.float64) ** 2))))
        return [float(value) for value in raw]

    def sparse(self, text: str) -> list[tuple[int, float]]:
        """The (index, weight) pairs ``/embed_sparse`` answers for ``text``, by ascending index."""
        rng = np.random.default_rng(_seed("sparse", text))
        count = min(SPARSE_VOCAB, len(text.split()) + 2)
        indices = np.sort(rng.choice(SPARSE_VOCAB, size=count, replace=False))
        weights = rng.uniform(0.05, 3.0, size=count).astype(np.float32)
        return [(int(index), float(weight)) for index, weight in zip(indices, weights, strict=True)]

    def token_vectors(self, text: str) -> list[list[float]]:
        """``/embed_all``'s answer for ``text``: one unnormalised vector per token, specials
        included."""
        rows = []
        for position in range(self.token_count(text)):
            rng = np.random.default_rng(_seed("token vector", text, str(position)))
            rows.append([float(v) for v in rng.standard_normal(self.dimension).astype(np.float32)])
        return rows

    def logit(self, query: str, text: str) -> float:
        """The raw relevance score of ``text`` for ``query`` (``raw_scores: true``)."""
        rng = np.random.default_rng(_seed("logit", query, text))
        return float(np.float32(rng.normal(0.0, 4.0)))

    def score(self, query: str, text: str, raw_scores: bool = False) -> float:
        """The ``/rerank`` score: the logit, or its sigmoid as TEI gives for a one-label model."""
        logit = self.logit(query, text)
        return logit if raw_scores else _sigmoid(logit)

    def logits(self, sequence: Sequence) -> list[float]:
        """The raw scores ``/predict`` gives one sequence, one per label."""
        if self.kind == "reranker":
            query, text = sequence if len(sequence) == 2 else ("", sequence[0])
            return [self.logit(query, text)]
        rng = np.random.default_rng(_seed("classify", *sequence))
        return [float(v) for v in rng.normal(0.0, 3.0, size=len(CLASSIFIER_LABELS))]

    def predictions(self, sequence: Sequence, raw_scores: bool = False) -> list[dict[str, Any]]:
        """``/predict``'s answer for one sequence: labels best first; sigmoid of a one-label
        model's score, softmax of several, unless ``raw_scores`` (core/src/infer.rs, predict)."""
        logits = np.array(self.logits(sequence), dtype=np.float32)
        if raw_scores:
            scores = logits
        elif len(logits) == 1:
            scores = np.array([_sigmoid(float(logits[0]))], dtype=np.float32)
        else:
            exp = np.exp(logits - logits.max())
            scores = exp / exp.sum()
        labels = ("LABEL_0",) if self.kind == "reranker" else CLASSIFIER_LABELS
        ranked = [
            {"score": float(s), "label": label} for s, label in zip(scores, labels, strict=True)
        ]
        # router/src/http/server.rs, predict: sorted ascending, then reversed.
        ranked.sort(key=lambda p: float(p["score"]))
        ranked.reverse()
        return ranked

    def similarities(self, source: str, sentences: list[str]) -> list[float]:
        """``/similarity``: the cosine of each sentence's unnormalised embedding with the
        source's (router/src/http/server.rs, similarity: ``1 - cosine distance``)."""
        anchor = np.array(self.vector(source, normalize=False), dtype=np.float64)
        answers = []
        for sentence in sentences:
            other = np.array(self.vector(sentence, normalize=False), dtype=np.float64)
            cosine = anchor @ other / (np.linalg.norm(anchor) * np.linalg.norm(other))
            answers.append(float(np.float32(cosine)))
        return answers

    def tokens(self, text: str, add_special_tokens: bool = True) -> list[dict[str, Any]]:
        """The ``/tokenize`` answer for one text: words split on whitespace, in <s> ... </s>.

        Offsets are UTF-8 byte offsets, and special tokens have none, as TEI's ``into_tokens``.
        """
        words: list[dict[str, Any]] = []
        for match in re.finditer(r"\S+", text):
            word = match.group()
            special = word in SPECIAL_IDS
            token_id = SPECIAL_IDS[word] if special else 4 + _seed("token", word) % (VOCAB - 4)
            if not special:
                with self._lock:
                    self._vocabulary[token_id] = word
            start = len(text[: match.start()].encode())
            words.append(
                {
                    "id": token_id,
                    "text": word,
                    "special": special,
                    "start": None if special else start,
                    "stop": None if special else start + len(word.encode()),
                }
            )
        if not add_special_tokens:
            return words
        bos = {"id": BOS_ID, "text": "<s>", "special": True, "start": None, "stop": None}
        eos = {"id": EOS_ID, "text": "</s>", "special": True, "start": None, "stop": None}
        return [bos, *words, eos]

    def token_count(self, text: str) -> int:
        """Tokens the model sees for ``text``: its words plus <s> and </s>."""
        return len(text.split()) + 2

    def decoded(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """``/decode`` of one row: the words of ids this fake has handed out, space-joined; ids
        it never gave are dropped, as a tokenizer drops ids outside its vocabulary."""
        names = {token_id: word for word, token_id in SPECIAL_IDS.items()}
        words = []
        with self._lock:
            for token_id in ids:
                if token_id in names:
                    if not skip_special_tokens:
                        words.append(names[token_id])
                elif token_id in self._vocabulary:
                    words.append(self._vocabulary[token_id])
        return " ".join(words)

    # ---- tokenization's checks (core/src/tokenization.rs) ------------------------------------

    def _prompt(self, prompt_name: str | None) -> str:
        # tokenization.rs, prepare_pre_prompt (this fake has no default prompt).
        if prompt_name is None:
            return ""
        if self.prompts is None:
            raise _validation(
                f"`default-prompt-name` is set to `{prompt_name}` but no prompts were found in "
                "the Sentence Transformers configuration"
            )
        if prompt_name not in self.prompts:
            raise _validation(
                f"`default-prompt-name` is set to `{prompt_name}` but it was not found in the "
                f"Sentence Transformers prompts. Available prompts: {sorted(self.prompts)}"
            )
        return self.prompts[prompt_name]

    def _char_limit(self, texts: list[str], truncate: bool) -> list[str]:
        # tokenization.rs, tokenize_input: refused past the limit, or cut there to truncate
        # (a pair's texts each to half of it).
        limit = self.max_input_length * MAX_CHAR_MULTIPLIER
        count = sum(len(text) for text in texts)
        if count <= limit:
            return texts
        if not truncate:
            raise _validation(f"`inputs` must have less than {limit} characters. Given: {count}")
        share = limit // len(texts)
        return [text.encode()[:share].decode("utf-8", "ignore") for text in texts]

    def _kept(self, text: str, words: int, direction: Direction) -> str:
        """What truncation keeps of ``text``: ``words`` of its words, from the start or the
        end, as the span of text they cover (the whole text when nothing is cut)."""
        spans = [match.span() for match in re.finditer(r"\S+", text)]
        if words >= len(spans):
            return text
        if words <= 0:
            return ""
        kept = spans[:words] if direction == "Right" else spans[-words:]
        return text[kept[0][0] : kept[-1][1]]

    def _encode(
        self, item: Item, truncate: bool, direction: Direction, prompt_name: str | None
    ) -> _Encoded:
        """tokenization.rs, ``encode`` then ``encode_input``: one text (or token ids) as the
        model runs it, or the refusal TEI gives it."""
        if len(item) == 0:
            raise _empty("`inputs` cannot be empty")
        prompt = self._prompt(prompt_name)
        if isinstance(item, list):
            # tokenize_input: ids become text again, re-encoded without added specials unless a
            # prompt is prepended.
            text = prompt + self.decoded(item, skip_special_tokens=bool(prompt))
            specials = bool(prompt)
        else:
            [text] = self._char_limit([item], truncate)
            text, specials = prompt + text, True
        added = 2 if specials else 0
        words = len(text.split())
        if truncate and words + added > self.max_input_length:
            kept = self.max_input_length - added
            return _Encoded(self.max_input_length, (self._kept(text, kept, direction),))
        count = words + added
        if count > self.max_input_length:
            raise _validation(
                f"`inputs` must have less than {self.max_input_length} tokens. Given: {count}"
            )
        return _Encoded(count, (text,))

    def _encode_pair(self, sequence: Sequence, truncate: bool, direction: Direction) -> _Encoded:
        """A /predict sequence or a /rerank (query, text) pair: ``<s> a </s></s> b </s>``, cut
        longest-first when truncating (tokenization.rs, encode_input with EncodingInput::Dual)."""
        if len(sequence) == 1:
            return self._encode(sequence[0], truncate, direction, None)
        first, second = sequence
        if not first and not second:
            raise _empty("`inputs` cannot be empty")
        first, second = self._char_limit([first, second], truncate)
        counts = [len(first.split()), len(second.split())]
        budget = self.max_input_length - 4
        if truncate and sum(counts) > budget:
            # TruncationStrategy::LongestFirst: a token off the longer text until both fit.
            while sum(counts) > budget:
                longer = 0 if counts[0] > counts[1] else 1
                counts[longer] -= 1
            kept = (
                self._kept(first, counts[0], direction),
                self._kept(second, counts[1], direction),
            )
            return _Encoded(self.max_input_length, kept)
        count = sum(counts) + 4
        if count > self.max_input_length:
            raise _validation(
                f"`inputs` must have less than {self.max_input_length} tokens. Given: {count}"
            )
        return _Encoded(count, (first, second))

    # ---- HTTP --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget recorded traffic and injected faults, keeping the model."""
        with self._lock:
            self.requests.clear()
            self.contract_violations.clear()
            self.answers_by_path.clear()
            self.faults.clear()
            self.fault = None
            self.delay_s = 0.0
            self.healthy = True
            self.strip_headers = False

    def respond(
        self, method: str, path: str, body: object | None, headers: Mapping[str, str]
    ) -> Answer:
        """Answer one request: (status, response headers, body bytes).

        ``body`` is the raw request body (bytes) or an already-parsed JSON value; None for no
        body. Raises ``ConnectionDropped`` for a ``drop`` fault.
        """
        outcome = self._accept(method, path, body, headers)
        if isinstance(outcome, tuple):
            if method.upper() == "POST" and self.delay_s > 0:
                time.sleep(self.delay_s)
            return outcome
        if not self._take(outcome.permits):
            return _overloaded().answer()
        try:
            if self.delay_s > 0:
                time.sleep(self.delay_s)
            return self._counted(path, self._run(outcome))
        finally:
            self._give(outcome.permits)

    def respx_side_effect(self, request: httpx.Request) -> httpx.Response:
        """A respx side effect: ``respx.route(host=...).mock(side_effect=fake.respx_side_effect)``.

        ``delay_s`` blocks the calling thread here; with an async client use
        ``respx_async_side_effect``, which sleeps without blocking the event loop.
        """
        try:
            status, headers, content = self.respond(
                request.method, request.url.path, request.read(), request.headers
            )
        except ConnectionDropped:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None
        return httpx.Response(status, headers=headers, content=content)

    async def respx_async_side_effect(self, request: httpx.Request) -> httpx.Response:
        """``respx_side_effect`` for async clients: ``delay_s`` is awaited, not slept."""
        try:
            outcome = self._accept(
                request.method, request.url.path, await request.aread(), request.headers
            )
        except ConnectionDropped:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None
        path = request.url.path
        if isinstance(outcome, tuple):
            if request.method.upper() == "POST" and self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
            answer = outcome
        elif not self._take(outcome.permits):
            answer = _overloaded().answer()
        else:
            try:
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                answer = self._counted(path, self._run(outcome))
            finally:
                self._give(outcome.permits)
        status, headers, content = answer
        return httpx.Response(status, headers=headers, content=content)

    def _take(self, permits: int) -> bool:
        # core/src/infer.rs, try_acquire_permit: one permit per input, none waited for.
        with self._lock:
            if self.permits_in_use + permits > self.max_concurrent_requests:
                return False
            self.permits_in_use += permits
            return True

    def _give(self, permits: int) -> None:
        with self._lock:
            self.permits_in_use -= permits

    def _run(self, plan: _Plan) -> Answer:
        try:
            return plan.run()
        except _Rejected as rejected:
            return rejected.answer()

    def _counted(self, path: str, answer: Answer) -> Answer:
        status, headers, content = answer
        if status == 200:
            with self._lock:
                self.answers_by_path[path] += 1
            if self.strip_headers:
                headers = {k: v for k, v in headers.items() if not k.startswith("x-")}
        return status, headers, content

    def _accept(
        self, method: str, path: str, body: object | None, headers: Mapping[str, str]
    ) -> Answer | _Plan:
        """Everything up to the handler's work: routing, the API key, faults, axum's body
        checks, and the handler's own checks before it takes permits. An answer comes back
        counted in ``answers_by_path`` when it is a real one."""
        method = method.upper()
        lowered = {key.lower(): value for key, value in headers.items()}
        content_type = lowered.get("content-type", "").split(";")[0].strip().lower()
        parsed: Any = None
        syntax_error = ""
        if isinstance(body, bytes | bytearray):
            raw = bytes(body)
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError as error:
                syntax_error = str(error)
            if not raw:
                syntax_error = "EOF while parsing a value at line 1 column 0"
        else:
            # An already-parsed body stands for a JSON request, declared or not.
            raw = b"" if body is None else json.dumps(body).encode()
            parsed = body
            if body is None:
                syntax_error = "EOF while parsing a value at line 1 column 0"
            if body is not None and not content_type:
                content_type = "application/json"
        with self._lock:
            self.requests.append(RecordedRequest(method, path, lowered, parsed, raw))

        if path not in GET_ROUTES | POST_ROUTES:
            return 404, {}, b""
        allowed = [
            m for m, routes in (("GET", GET_ROUTES), ("POST", POST_ROUTES)) if path in routes
        ]
        if method not in allowed:
            return 405, {"allow": ",".join(allowed)}, b""
        public = method == "GET" and path in PUBLIC_GET_ROUTES
        # server.rs, run: the auth layer wants exactly "Bearer <key>"; it answers 401 bare.
        authorized = lowered.get("authorization") == f"Bearer {self.api_key}"
        if self.api_key is not None and not public and not authorized:
            return 401, {}, b""
        if method == "GET":
            return self._get(path)

        route = self._route_of(path)
        self._check_request(route, parsed, syntax_error, content_type)
        fault = self._next_fault()
        if fault is not None:
            return self._faulty(fault, route, parsed, syntax_error)
        try:
            outcome = self._post(route, parsed, syntax_error, content_type, len(raw))
        except (_Rejected, _Plain) as refused:
            return refused.answer()
        return self._counted(path, outcome) if isinstance(outcome, tuple) else outcome

    def _route_of(self, path: str) -> str:
        """The handler a POST path runs: ``/`` and ``/invocations`` run the model type's own
        (server.rs, run: predict, rerank, similarity under TASK=sentence-similarity,
        embed_sparse for SPLADE, else embed)."""
        if path not in ("/", "/invocations"):
            return path
        if self.kind == "classifier":
            return "/predict"
        if self.kind == "reranker":
            return "/rerank"
        if self.task == "sentence-similarity":
            return "/similarity"
        return "/embed_sparse" if self.kind == "splade" else "/embed"

    def _check_request(
        self, route: str, parsed: object, syntax_error: str, content_type: str
    ) -> None:
        """Record how a POST body breaks TEI's published contract, if it does."""
        if content_type != "application/json":
            message = (
                f"POST {route}: content-type {content_type or 'missing'}, not application/json"
            )
        elif syntax_error:
            message = f"POST {route}: body is not JSON"
        else:
            try:
                contract.validate("tei", REQUEST_SCHEMAS[route], parsed)
            except ValidationError as error:
                message = f"POST {route}: {error.message}"
            else:
                return
        with self._lock:
            self.contract_violations.append(message)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self.faults:
                return self.faults.pop(0)
            return self.fault

    def _get(self, path: str) -> Answer:
        if path == "/info":
            answer: Answer = 200, dict(JSON_HEADERS), json.dumps(self.info()).encode()
        elif path == "/metrics":
            with self._lock:
                served = sum(self.answers_by_path.values())
            text = f"# TYPE te_request_success counter\nte_request_success {served}\n"
            answer = 200, {"content-type": "text/plain; charset=utf-8"}, text.encode()
        elif self.healthy:
            # server.rs, health (GET /health, / and /ping): 200 with no body.
            answer = 200, {}, b""
        else:
            answer = 503, dict(JSON_HEADERS), _error_body("Unhealthy", "unhealthy")
        return self._counted(path, answer)

    def _faulty(self, fault: Fault, route: str, parsed: object, syntax_error: str) -> Answer:
        if fault.kind == "drop":
            raise ConnectionDropped
        if fault.kind == "status":
            headers = dict(JSON_HEADERS)
            if fault.retry_after is not None:
                headers["retry-after"] = str(fault.retry_after)
            return fault.code, headers, _error_body(fault.error_type or "Backend", fault.message)
        if fault.kind == "malformed":
            return 200, dict(JSON_HEADERS), MALFORMED_BODY
        try:
            outcome = self._post(route, parsed, syntax_error, "application/json", 0)
        except (_Rejected, _Plain) as refused:
            return refused.answer()
        status, headers, content = outcome if isinstance(outcome, tuple) else self._run(outcome)
        if status != 200:
            # A request TEI would refuse is refused, fault or not: there is nothing to mangle.
            return status, headers, content
        answer = json.loads(content)
        if fault.kind == "short":
            mangled: object = answer[:-1]
        else:
            mangled = {WRONG_SHAPE_KEYS[route]: answer}
        return status, headers, json.dumps(mangled).encode()

    def _post(
        self, route: str, parsed: object, syntax_error: str, content_type: str, size: int
    ) -> Answer | _Plan:
        # axum's Json extractor, in its order: the content type, the body's size
        # (DefaultBodyLimit, TEI's payload_limit), JSON syntax, then the request type's shape.
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise _Plain(415, "Expected request with `Content-Type: application/json`")
        if size > self.payload_limit:
            raise _Plain(413, "Failed to buffer the request body: length limit exceeded")
        if syntax_error:
            raise _Plain(400, f"Failed to parse the request body as JSON: {syntax_error}")
        handlers: dict[str, Callable[[dict[str, Any]], Answer | _Plan]] = {
            "/embed": self._embed,
            "/embed_sparse": self._embed_sparse,
            "/embed_all": self._embed_all,
            "/rerank": self._rerank,
            "/predict": self._predict,
            "/similarity": self._similarity,
            "/tokenize": self._tokenize,
            "/decode": self._decode,
        }
        try:
            body = _object(parsed, REQUEST_SCHEMAS[route])
            return handlers[route](body)
        except _DataError as error:
            raise _Plain(
                422, f"Failed to deserialize the JSON body into the target type: {error}"
            ) from None

    # ---- handlers (router/src/http/server.rs) ------------------------------------------------

    def _truncate(self, body: dict[str, Any]) -> bool:
        # Every handler: `req.truncate.unwrap_or(info.auto_truncate)`.
        truncate = _optional_bool(body, "truncate")
        return self.auto_truncate if truncate is None else truncate

    def _check_batch(self, size: int) -> None:
        if size > self.max_client_batch_size:
            raise _batch_too_large(size, self.max_client_batch_size)

    def _inputs(self, body: dict[str, Any]) -> list[Item]:
        """The items of ``inputs`` after the batch checks of embed, embed_sparse and embed_all:
        an empty batch, then one over ``max_client_batch_size``."""
        batch, items = _input(body)
        if batch and not items:
            raise _Rejected("Empty", "`inputs` cannot be empty")  # unreachable: [] is Single
        if batch:
            self._check_batch(len(items))
        return items

    def _success(self, payload: object, tokens: int, characters: int) -> Answer:
        # router/src/lib.rs, `impl From<ResponseMetadata> for HeaderMap`: every model route's
        # answer carries these.
        headers = {
            **JSON_HEADERS,
            "x-compute-type": "gpu+optimized",
            "x-compute-time": "0",
            "x-compute-characters": str(characters),
            "x-compute-tokens": str(tokens),
            "x-total-time": "0",
            "x-tokenization-time": "0",
            "x-queue-time": "0",
            "x-inference-time": "0",
        }
        return 200, headers, json.dumps(payload).encode()

    def _embed(self, body: dict[str, Any]) -> _Plan:
        # server.rs, embed; the checks per input are infer.rs, embed_pooled then embed.
        items = self._inputs(body)
        truncate, direction = self._truncate(body), _direction(body)
        prompt_name = _optional_str(body, "prompt_name")
        normalize = _bool(body, "normalize", True)
        dimensions = _optional_usize(body, "dimensions")

        def run() -> Answer:
            rows, tokens = [], 0
            for item in items:
                if self.kind == "splade" and normalize:
                    raise _backend("`normalize` is not available for SPLADE models")
                if dimensions == 0:
                    raise _validation("`dimensions` should be positive")
                if self.kind in ("reranker", "classifier"):
                    raise _backend("Model is not an embedding model")
                encoded = self._encode(item, truncate, direction, prompt_name)
                width = SPARSE_VOCAB if self.kind == "splade" else self.dimension
                if dimensions is not None and dimensions > width:
                    raise _validation(
                        "`dimensions` should be smaller than the maximum embedding dimension."
                    )
                rows.append(self.vector(encoded.seeds[0], normalize, dimensions))
                tokens += encoded.tokens
            return self._success(rows, tokens, sum(len(item) for item in items))

        return _Plan(len(items), run)

    def _embed_sparse(self, body: dict[str, Any]) -> _Plan:
        # server.rs, embed_sparse; per input infer.rs, embed_sparse then embed.
        items = self._inputs(body)
        truncate, direction = self._truncate(body), _direction(body)
        prompt_name = _optional_str(body, "prompt_name")

        def run() -> Answer:
            rows, tokens = [], 0
            for item in items:
                if self.kind != "splade":
                    raise _backend("Model is not an embedding model with SPLADE pooling")
                encoded = self._encode(item, truncate, direction, prompt_name)
                pairs = self.sparse(encoded.seeds[0])
                rows.append([{"index": i, "value": v} for i, v in pairs if v != 0.0])
                tokens += encoded.tokens
            return self._success(rows, tokens, sum(len(item) for item in items))

        return _Plan(len(items), run)

    def _embed_all(self, body: dict[str, Any]) -> _Plan:
        # server.rs, embed_all; per input infer.rs, embed_all then embed.
        items = self._inputs(body)
        truncate, direction = self._truncate(body), _direction(body)
        prompt_name = _optional_str(body, "prompt_name")

        def run() -> Answer:
            rows, tokens = [], 0
            for item in items:
                if self.kind == "splade":
                    raise _backend("`embed_all` is not available for SPLADE models")
                if self.kind in ("reranker", "classifier"):
                    raise _backend("Model is not an embedding model")
                encoded = self._encode(item, truncate, direction, prompt_name)
                rows.append(self.token_vectors(encoded.seeds[0])[: encoded.tokens])
                tokens += encoded.tokens
            return self._success(rows, tokens, sum(len(item) for item in items))

        return _Plan(len(items), run)

    def _rerank(self, body: dict[str, Any]) -> _Plan:
        # server.rs, rerank: empty texts, then the model type, then the batch size; each text
        # then takes a permit and runs infer.rs, predict on (query, text).
        query = _required(body, "query")
        if not isinstance(query, str):
            raise _DataError("query", f"invalid type: {query!r}, expected a string")
        texts = _strings(body, "texts")
        truncate, direction = self._truncate(body), _direction(body)
        raw_scores = _bool(body, "raw_scores", False)
        return_text = _bool(body, "return_text", False)
        if not texts:
            raise _Rejected("Empty", "`texts` cannot be empty")
        if self.kind != "reranker":
            raise _backend("model is not a re-ranker model")
        self._check_batch(len(texts))

        def run() -> Answer:
            ranks, tokens = [], 0
            for index, text in enumerate(texts):
                encoded = self._encode_pair((query, text), truncate, direction)
                first, second = encoded.seeds
                rank: dict[str, Any] = {"index": index}
                if return_text:
                    rank["text"] = text
                rank["score"] = self.score(first, second, raw_scores)
                ranks.append(rank)
                tokens += encoded.tokens
            # TEI sorts ascending and then reverses, which also reverses ties.
            ranks.sort(key=lambda rank: float(rank["score"]))
            ranks.reverse()
            characters = len(query) * len(texts) + sum(len(text) for text in texts)
            return self._success(ranks, tokens, characters)

        return _Plan(len(texts), run)

    def _predict(self, body: dict[str, Any]) -> _Plan:
        # server.rs, predict: a batch is size-checked; then infer.rs, predict per sequence.
        batch, sequences = _predict_input(body)
        truncate, direction = self._truncate(body), _direction(body)
        raw_scores = _bool(body, "raw_scores", False)
        if batch:
            self._check_batch(len(sequences))

        def run() -> Answer:
            answers, tokens = [], 0
            for sequence in sequences:
                if self.kind not in ("reranker", "classifier"):
                    raise _backend("Model is not a classifier model")
                encoded = self._encode_pair(sequence, truncate, direction)
                kept: Sequence = (
                    (encoded.seeds[0],)
                    if len(encoded.seeds) == 1
                    else (encoded.seeds[0], encoded.seeds[1])
                )
                answers.append(self.predictions(kept, raw_scores))
                tokens += encoded.tokens
            characters = sum(len(text) for sequence in sequences for text in sequence)
            return self._success(answers if batch else answers[0], tokens, characters)

        return _Plan(len(sequences), run)

    def _similarity(self, body: dict[str, Any]) -> _Plan:
        # server.rs, similarity: empty sentences, then the batch with the source counted, then
        # embed of [source, *sentences] unnormalised, then each cosine with the source.
        inputs = _object(_required(body, "inputs"), "SimilarityInput")
        source = _required(inputs, "source_sentence")
        if not isinstance(source, str):
            raise _DataError("inputs.source_sentence", "invalid type, expected a string")
        sentences = _strings(inputs, "sentences")
        parameters = body.get("parameters")
        parameters = {} if parameters is None else _object(parameters, "SimilarityParameters")
        if not sentences:
            raise _Rejected("Empty", "`inputs.sentences` cannot be empty")
        self._check_batch(len(sentences) + 1)
        embedded = self._embed(
            {
                "inputs": [source, *sentences],
                "truncate": _optional_bool(parameters, "truncate"),
                "truncation_direction": _direction(parameters),
                "prompt_name": _optional_str(parameters, "prompt_name"),
                "normalize": False,
            }
        )

        def run() -> Answer:
            status, headers, content = embedded.run()
            rows = np.array(json.loads(content), dtype=np.float64)
            norms = np.linalg.norm(rows, axis=1)
            cosines = rows[1:] @ rows[0] / (norms[1:] * norms[0])
            return status, headers, json.dumps([float(np.float32(c)) for c in cosines]).encode()

        return _Plan(embedded.permits, run)

    def _tokenize(self, body: dict[str, Any]) -> Answer:
        # server.rs, tokenize (no permits); per input tokenization.rs, tokenize then
        # tokenize_input without truncation.
        value = _required(body, "inputs")
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, list) and all(isinstance(text, str) for text in value):
            if not value:
                raise _Rejected("Empty", "`inputs` cannot be empty")
            self._check_batch(len(value))
            texts = value
        else:
            raise _DataError(
                "inputs", "data did not match any variant of untagged enum TokenizeInput"
            )
        add_special_tokens = _bool(body, "add_special_tokens", True)
        prompt_name = _optional_str(body, "prompt_name")
        rows = []
        for text in texts:
            if not text:
                raise _empty("`inputs` cannot be empty")
            prompt = self._prompt(prompt_name)
            self._char_limit([text], truncate=False)
            rows.append(self.tokens(prompt + text, add_special_tokens))
        # TEI's /tokenize answers bare JSON: none of the x-compute-* headers of the model routes.
        return 200, dict(JSON_HEADERS), json.dumps(rows).encode()

    def _decode(self, body: dict[str, Any]) -> Answer:
        # server.rs, decode (no permits); per row tokenization.rs, decode.
        value = _required(body, "ids")
        if _is_u32_list(value):
            rows = [value]  # `InputIds` is untagged: [] is one empty row
        elif isinstance(value, list) and all(_is_u32_list(row) for row in value):
            self._check_batch(len(value))
            rows = value
        else:
            raise _DataError("ids", "data did not match any variant of untagged enum InputIds")
        skip_special_tokens = _bool(body, "skip_special_tokens", True)
        texts = []
        for row in rows:
            if not row:
                raise _empty("`input_ids` cannot be empty")
            texts.append(self.decoded(row, skip_special_tokens))
        return 200, dict(JSON_HEADERS), json.dumps(texts).encode()


# ---- loopback server -------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeTEI) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer (a timeout under `delay_s`) is expected, not a bug.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body waits for the
    # client's delayed ACK (40 ms a request on Linux).
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def _body(self) -> bytes | None:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            # The trailer section ends at the first empty line.
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else None

    def _answer(self) -> None:
        body = self._body()
        headers = {key.lower(): value for key, value in self.headers.items()}
        try:
            status, answer_headers, content = self.server.fake.respond(
                self.command, urlsplit(self.path).path, body if body is not None else b"", headers
            )
        except ConnectionDropped:
            self.close_connection = True
            return
        self.send_response(status)
        for key, value in answer_headers.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
        self.wfile.flush()

    # http.server dispatches a request to the method named do_<METHOD>.
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        # http.server logs every request to stderr, which would bury a failing test's output.
        return


@contextmanager
def serve(fake: FakeTEI) -> Iterator[str]:
    """Run ``fake`` as an HTTP/1.1 server on 127.0.0.1; yields its base URL."""
    server = _Server(fake)
    # shutdown() waits for the serving loop to wake: a short poll keeps each test's exit quick.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        # Idle keep-alive connections would hold their threads until the client closes them.
        with server.connections_lock:
            open_connections = list(server.connections)
        for connection in open_connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        thread.join(timeout=5)
