"""A fake Text Embeddings Inference 1.9.3 for tests of the remote backend.

TEI cannot run on the test machines, so this stands in for it: the routes the remote backend uses
(``/info``, ``/health``, ``/embed``, ``/embed_sparse``, ``/rerank``, ``/tokenize``) with TEI's
field names, shapes, status codes and ``{"error", "error_type"}`` bodies, checked against TEI's
published OpenAPI (``tests/contracts/tei-openapi.json``). Answers are deterministic functions of
the text (``vector``, ``sparse``, ``logit``, ``tokens``), so a test can compute what a correct
client must return. Faults (errors, garbage, short answers, dropped connections, delays) can be
injected while it runs.

Two ways to mount it: ``respx.route(host=...).mock(side_effect=fake.respx_side_effect)`` for an
in-process client, or ``with serve(fake) as url:`` for a real loopback HTTP/1.1 server that another
process (a ``bge-serve`` subprocess) can reach.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import http.server
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
from jsonschema.exceptions import ValidationError

from tests import contract

Kind = Literal["embedding", "splade", "reranker"]
ErrorType = Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]
FaultKind = Literal["status", "malformed", "short", "wrong_shape", "drop"]

VERSION = "1.9.3"
DEFAULT_MODELS: dict[str, str] = {
    "embedding": "BAAI/bge-m3",
    "splade": "naver/splade-v3",
    "reranker": "BAAI/bge-reranker-v2-m3",
}
# naver/splade-v3 is a BERT model: its sparse indices live in BERT's vocabulary.
SPARSE_VOCAB = 30522
# XLM-RoBERTa's ids for <s> and </s>, the special tokens bge-m3 and bge-reranker add.
BOS_ID, EOS_ID = 0, 2

# How TEI maps an error type to a status (router/src/lib.rs, ErrorResponse into a response).
ERROR_TYPE_OF_STATUS: dict[int, ErrorType] = {
    400: "Empty",
    413: "Validation",
    422: "Tokenizer",
    424: "Backend",
    429: "Overloaded",
    503: "Unhealthy",
}
REQUEST_SCHEMAS: dict[str, str] = {
    "/embed": "EmbedRequest",
    "/embed_sparse": "EmbedSparseRequest",
    "/rerank": "RerankRequest",
    "/tokenize": "TokenizeRequest",
}
ROUTES: dict[str, str] = {
    "/info": "GET",
    "/health": "GET",
    "/embed": "POST",
    "/embed_sparse": "POST",
    "/rerank": "POST",
    "/tokenize": "POST",
}
# The object a ``wrong_shape`` fault wraps a well-formed answer in, per route.
WRONG_SHAPE_KEYS: dict[str, str] = {
    "/embed": "embeddings",
    "/embed_sparse": "embeddings",
    "/rerank": "results",
    "/tokenize": "tokens",
}
MALFORMED_BODY = b'{"not json'
JSON_HEADERS: dict[str, str] = {"content-type": "application/json"}

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
            if code not in ERROR_TYPE_OF_STATUS:
                raise ValueError(f"TEI has no error type for status {code}: name one")
            error_type = ERROR_TYPE_OF_STATUS[code]
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
    """An error answer, raised from deep in request handling and turned into a response."""

    def __init__(self, status: int, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def _seed(*parts: str) -> int:
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _error_body(error_type: str, message: str) -> bytes:
    return json.dumps({"error": message, "error_type": error_type}).encode()


def _is_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    )


class FakeTEI:
    """TEI's HTTP behaviour for one served model, with recorded traffic and injectable faults.

    Attributes tests read or set while it runs (all guarded by one lock where it matters):
    ``requests``, ``contract_violations``, ``answers_by_path``, ``delay_s``, ``faults`` (consumed
    one per POST, in order) and ``fault`` (applied to every POST while set; ``faults`` go first).
    """

    def __init__(
        self,
        *,
        kind: Kind = "embedding",
        model_id: str | None = None,
        dimension: int = 8,
        max_client_batch_size: int = 32,
        max_input_length: int = 512,
        auto_truncate: bool = False,
    ) -> None:
        self.kind: Kind = kind
        self.model_id = model_id if model_id is not None else DEFAULT_MODELS[kind]
        self.dimension = dimension
        self.max_client_batch_size = max_client_batch_size
        self.max_input_length = max_input_length
        self.auto_truncate = auto_truncate
        self.requests: list[RecordedRequest] = []
        self.contract_violations: list[str] = []
        self.answers_by_path: collections.Counter[str] = collections.Counter()
        self.delay_s: float = 0.0
        self.faults: list[Fault] = []
        self.fault: Fault | None = None
        self._lock = threading.Lock()

    # ---- the deterministic model -------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The body of ``GET /info``."""
        model_type: dict[str, Any]
        if self.kind == "reranker":
            model_type = {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
        else:
            pooling = "splade" if self.kind == "splade" else "cls"
            model_type = {"embedding": {"pooling": pooling}}
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_dtype": "float16",
            "model_type": model_type,
            "served_model_name": self.model_id,
            "max_concurrent_requests": 512,
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
        truncation does.
        """
        rng = np.random.default_rng(_seed("vector", text))
        raw = rng.standard_normal(self.dimension).astype(np.float32)
        # Unnormalised vectors get a length far from 1 so a client that drops `normalize` shows.
        raw *= np.float32(rng.uniform(2.0, 8.0))
        if dimensions is not None:
            raw = raw[:dimensions]
        if normalize:
            raw = raw / np.linalg.norm(raw)
        return [float(value) for value in raw]

    def sparse(self, text: str) -> list[tuple[int, float]]:
        """The (index, weight) pairs ``/embed_sparse`` answers for ``text``, by ascending index."""
        rng = np.random.default_rng(_seed("sparse", text))
        count = min(SPARSE_VOCAB, len(text.split()) + 2)
        indices = np.sort(rng.choice(SPARSE_VOCAB, size=count, replace=False))
        weights = rng.uniform(0.05, 3.0, size=count).astype(np.float32)
        return [(int(index), float(weight)) for index, weight in zip(indices, weights, strict=True)]

    def logit(self, query: str, text: str) -> float:
        """The raw relevance score of ``text`` for ``query`` (``raw_scores: true``)."""
        rng = np.random.default_rng(_seed("logit", query, text))
        return float(np.float32(rng.normal(0.0, 4.0)))

    def score(self, query: str, text: str, raw_scores: bool = False) -> float:
        """The ``/rerank`` score: the logit, or its sigmoid as TEI gives for a one-label model."""
        logit = np.float32(self.logit(query, text))
        if raw_scores:
            return float(logit)
        return float(np.float32(1.0) / (np.float32(1.0) + np.exp(-logit)))

    def tokens(self, text: str, add_special_tokens: bool = True) -> list[dict[str, Any]]:
        """The ``/tokenize`` answer for one text: words split on whitespace, in <s> ... </s>."""
        words: list[dict[str, Any]] = [
            {
                "id": 5 + _seed("token", match.group()) % 995,
                "text": match.group(),
                "special": False,
                "start": match.start(),
                "stop": match.end(),
            }
            for match in re.finditer(r"\S+", text)
        ]
        if not add_special_tokens:
            return words
        # TEI gives special tokens no offsets (null start and stop).
        bos = {"id": BOS_ID, "text": "<s>", "special": True, "start": None, "stop": None}
        eos = {"id": EOS_ID, "text": "</s>", "special": True, "start": None, "stop": None}
        return [bos, *words, eos]

    def token_count(self, text: str) -> int:
        """Tokens the model sees for ``text``: its words plus <s> and </s>."""
        return len(text.split()) + 2

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

    def respond(
        self, method: str, path: str, body: object | None, headers: Mapping[str, str]
    ) -> Answer:
        """Answer one request: (status, response headers, body bytes).

        ``body`` is the raw request body (bytes) or an already-parsed JSON value; None for no
        body. Raises ``ConnectionDropped`` for a ``drop`` fault.
        """
        if method.upper() == "POST" and self.delay_s > 0:
            time.sleep(self.delay_s)
        return self._respond(method, path, body, headers)

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
        if request.method.upper() == "POST" and self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        try:
            status, headers, content = self._respond(
                request.method, request.url.path, await request.aread(), request.headers
            )
        except ConnectionDropped:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None
        return httpx.Response(status, headers=headers, content=content)

    def _respond(
        self, method: str, path: str, body: object | None, headers: Mapping[str, str]
    ) -> Answer:
        method = method.upper()
        lowered = {key.lower(): value for key, value in headers.items()}
        content_type = lowered.get("content-type", "").split(";")[0].strip().lower()
        parsed: Any = None
        if isinstance(body, bytes | bytearray):
            raw = bytes(body)
            is_json = bool(raw)
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                is_json = False
        else:
            # An already-parsed body stands for a JSON request, declared or not.
            raw = b"" if body is None else json.dumps(body).encode()
            parsed, is_json = body, body is not None
            if is_json and not content_type:
                content_type = "application/json"
        with self._lock:
            self.requests.append(RecordedRequest(method, path, lowered, parsed, raw))

        if path not in ROUTES:
            return 404, {}, b""
        if ROUTES[path] != method:
            return 405, {"allow": ROUTES[path]}, b""
        if method == "GET":
            return self._get(path)

        self._check_request(path, parsed, is_json, content_type)
        fault = self._next_fault()
        if fault is not None:
            return self._faulty(fault, path, parsed, is_json)
        if content_type != "application/json":
            # axum's Json extractor refuses a body not declared as JSON before reading it.
            return (
                415,
                {"content-type": "text/plain; charset=utf-8"},
                b"Expected request with `Content-Type: application/json`",
            )
        answer = self._post(path, parsed, is_json)
        if answer[0] == 200:
            with self._lock:
                self.answers_by_path[path] += 1
        return answer

    def _check_request(self, path: str, parsed: object, is_json: bool, content_type: str) -> None:
        """Record how a POST body breaks TEI's contract, if it does."""
        if content_type != "application/json":
            message = f"POST {path}: content-type {content_type or 'missing'}, not application/json"
        elif not is_json:
            message = f"POST {path}: body is not JSON"
        else:
            try:
                contract.validate("tei", REQUEST_SCHEMAS[path], parsed)
            except ValidationError as error:
                message = f"POST {path}: {error.message}"
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
        with self._lock:
            self.answers_by_path[path] += 1
        if path == "/health":
            return 200, {}, b""
        return 200, dict(JSON_HEADERS), json.dumps(self.info()).encode()

    def _faulty(self, fault: Fault, path: str, parsed: object, is_json: bool) -> Answer:
        if fault.kind == "drop":
            raise ConnectionDropped
        if fault.kind == "status":
            headers = dict(JSON_HEADERS)
            if fault.retry_after is not None:
                headers["retry-after"] = str(fault.retry_after)
            return fault.code, headers, _error_body(fault.error_type or "Backend", fault.message)
        if fault.kind == "malformed":
            return 200, dict(JSON_HEADERS), MALFORMED_BODY
        status, headers, content = self._post(path, parsed, is_json)
        if status != 200:
            # A request TEI would refuse is refused, fault or not: there is nothing to mangle.
            return status, headers, content
        answer = json.loads(content)
        if fault.kind == "short":
            mangled: object = answer[:-1]
        else:
            mangled = {WRONG_SHAPE_KEYS[path]: answer}
        return status, headers, json.dumps(mangled).encode()

    def _post(self, path: str, parsed: object, is_json: bool) -> Answer:
        try:
            if not is_json:
                raise _Rejected(422, "Validation", "Failed to parse the request body as JSON")
            if not isinstance(parsed, dict):
                raise _Rejected(422, "Validation", "the request body must be a JSON object")
            if path == "/embed":
                return self._embed(parsed)
            if path == "/embed_sparse":
                return self._embed_sparse(parsed)
            if path == "/rerank":
                return self._rerank(parsed)
            return self._tokenize(parsed)
        except _Rejected as rejected:
            return (
                rejected.status,
                dict(JSON_HEADERS),
                _error_body(rejected.error_type, rejected.message),
            )

    # ---- routes ------------------------------------------------------------------------------

    def _texts(self, request: dict[str, Any]) -> list[str]:
        """The texts of an ``inputs`` field, checked as TEI's handler checks them, in its order."""
        if "inputs" not in request:
            raise _Rejected(422, "Validation", "missing field `inputs`")
        inputs = request["inputs"]
        if isinstance(inputs, str):
            return [inputs]
        if _is_ids(inputs):
            return [" ".join(str(token_id) for token_id in inputs)]
        if not isinstance(inputs, list):
            raise _Rejected(422, "Validation", "`inputs` must be a string or a list")
        if not inputs:
            raise _Rejected(400, "Empty", "Batch is empty")
        texts: list[str] = []
        for item in inputs:
            if isinstance(item, str):
                texts.append(item)
            elif _is_ids(item):
                texts.append(" ".join(str(token_id) for token_id in item))
            else:
                raise _Rejected(422, "Validation", "each input must be a string or token ids")
        self._check_batch_size(len(texts))
        return texts

    def _check_batch_size(self, size: int) -> None:
        if size > self.max_client_batch_size:
            raise _Rejected(
                413,
                "Validation",
                f"batch size {size} > maximum allowed batch size {self.max_client_batch_size}",
            )

    def _truncate(self, request: dict[str, Any]) -> bool:
        truncate = request.get("truncate")
        return self.auto_truncate if truncate is None else bool(truncate)

    def _compute_tokens(self, counts: list[int], truncate: bool) -> int:
        """Tokens the model runs on; TEI refuses an over-long input unless it may truncate."""
        total = 0
        for count in counts:
            if count > self.max_input_length:
                if not truncate:
                    raise _Rejected(
                        413,
                        "Validation",
                        f"Input validation error: `inputs` must have less than "
                        f"{self.max_input_length} tokens. Given: {count}",
                    )
                count = self.max_input_length
            total += count
        return total

    def _success(self, payload: object, tokens: int, characters: int) -> Answer:
        # The metadata headers TEI adds to every successful /embed, /embed_sparse and /rerank.
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

    def _embed(self, request: dict[str, Any]) -> Answer:
        texts = self._texts(request)
        if self.kind == "reranker":
            raise _Rejected(424, "Backend", "Model is not an embedding model")
        normalize = request.get("normalize", True) is not False
        if self.kind == "splade":
            raise _Rejected(
                424,
                "Backend",
                "`normalize` is not available for SPLADE models"
                if normalize
                else "this fake serves no dense vectors for SPLADE models",
            )
        dimensions = request.get("dimensions")
        if dimensions is not None and not 0 < dimensions <= self.dimension:
            raise _Rejected(
                413,
                "Validation",
                f"Input validation error: `dimensions` must be between 1 and {self.dimension}",
            )
        tokens = self._compute_tokens(
            [self.token_count(text) for text in texts], self._truncate(request)
        )
        vectors = [self.vector(text, normalize, dimensions) for text in texts]
        return self._success(vectors, tokens, sum(len(text) for text in texts))

    def _embed_sparse(self, request: dict[str, Any]) -> Answer:
        texts = self._texts(request)
        if self.kind != "splade":
            raise _Rejected(424, "Backend", "`/embed_sparse` is only available for SPLADE models")
        tokens = self._compute_tokens(
            [self.token_count(text) for text in texts], self._truncate(request)
        )
        rows = [
            [{"index": index, "value": value} for index, value in self.sparse(text)]
            for text in texts
        ]
        return self._success(rows, tokens, sum(len(text) for text in texts))

    def _rerank(self, request: dict[str, Any]) -> Answer:
        query, texts = request.get("query"), request.get("texts")
        if not isinstance(query, str):
            raise _Rejected(422, "Validation", "`query` must be a string")
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise _Rejected(422, "Validation", "`texts` must be a list of strings")
        if not texts:
            raise _Rejected(400, "Empty", "Batch is empty")
        if self.kind != "reranker":
            raise _Rejected(424, "Backend", "model is not a re-ranker model")
        self._check_batch_size(len(texts))
        # A pair is tokenised as <s> query </s></s> text </s>: both texts' tokens and 4 specials.
        query_tokens = self.token_count(query)
        tokens = self._compute_tokens(
            [query_tokens + self.token_count(text) for text in texts], self._truncate(request)
        )
        raw_scores = request.get("raw_scores", False) is True
        ranks: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            rank: dict[str, Any] = {"index": index, "score": self.score(query, text, raw_scores)}
            if request.get("return_text") is True:
                rank["text"] = text
            ranks.append(rank)
        # TEI sorts ascending and then reverses, which also reverses ties; this does the same.
        ranks.sort(key=lambda rank: float(rank["score"]))
        ranks.reverse()
        characters = len(query) * len(texts) + sum(len(text) for text in texts)
        return self._success(ranks, tokens, characters)

    def _tokenize(self, request: dict[str, Any]) -> Answer:
        if "inputs" not in request:
            raise _Rejected(422, "Validation", "missing field `inputs`")
        inputs = request["inputs"]
        if isinstance(inputs, str):
            texts = [inputs]
        elif isinstance(inputs, list) and all(isinstance(text, str) for text in inputs):
            if not inputs:
                raise _Rejected(400, "Empty", "Batch is empty")
            self._check_batch_size(len(inputs))
            texts = inputs
        else:
            raise _Rejected(422, "Validation", "`inputs` must be a string or a list of strings")
        add_special_tokens = request.get("add_special_tokens", True) is not False
        rows = [self.tokens(text, add_special_tokens) for text in texts]
        # TEI's /tokenize answers bare JSON: none of the x-compute-* headers of the model routes.
        return 200, dict(JSON_HEADERS), json.dumps(rows).encode()


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
                self.command, urlsplit(self.path).path, body, headers
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
