"""Settings: every option is an environment variable and a CLI flag.

Built once at start-up by :func:`load_settings` and passed down; nothing reads
the environment anywhere else. A CLI flag wins over its environment variable,
which wins over the default.
"""

from __future__ import annotations

import argparse
import os
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal, get_args, get_origin

import msgspec

__all__ = [
    "HELP",
    "ModelDtype",
    "Settings",
    "build_parser",
    "env_name",
    "load_settings",
    "load_settings_and_rest",
]

Positive = Annotated[int, msgspec.Meta(ge=1)]
BackendName = Literal["flag", "infinity", "remote"]
RemoteKind = Literal["auto", "tei", "infinity", "self", "runpod", "vllm"]
ModelDtype = Literal["auto", "float32", "float16", "bfloat16"]
Chain = tuple[BackendName, ...]  # empty ("none"): the operation is not served


class Settings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    """Typed service settings; field ``foo_bar`` is env ``FOO_BAR`` and ``--foo-bar``."""

    device: Literal["auto", "cuda", "cpu"] = "auto"
    embed_backends: Chain = ("flag",)
    lexical_colbert_backends: Chain = ("flag",)
    rerank_backends: Chain = ("flag",)
    embedding_model_name: str = "BAAI/bge-m3"
    reranker_model_name: str = "BAAI/bge-reranker-v2-m3"
    models_dir: str | None = None
    embedding_served_name: str | None = None
    reranker_served_name: str | None = None
    model_aliases: tuple[str, ...] = ()
    embedding_size: Positive | None = None
    sparse_token_mapping: Literal["tokenizer", "hash"] = "tokenizer"
    sparse_index_space: Annotated[int, msgspec.Meta(ge=1, le=2**32)] = 1_048_576
    dtype: ModelDtype = "auto"
    use_fp16: bool | None = None  # deprecated: DTYPE
    sparse_backends: Chain | None = None  # deprecated: LEXICAL_COLBERT_BACKENDS
    torch_compile: bool = False
    packed_passes: bool = True
    host: str = "0.0.0.0"  # noqa: S104 - a container service listens on all interfaces
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8011
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_batch_size: Positive = 2048
    max_text_chars: Positive = 100_000
    max_request_bytes: Positive = 64 * 1024 * 1024
    max_request_tokens: Positive = 2_097_152
    max_response_bytes: Positive = 512 * 1024 * 1024
    max_inflight_response_bytes: Positive = 1024 * 1024 * 1024
    max_input_tokens: Positive | None = None
    openai_token_encoding: Annotated[str, msgspec.Meta(min_length=1)] = "cl100k_base"
    reranker_max_tokens: Positive = 512
    truncate: bool = True
    max_batch_tokens: Positive = 16_384
    batch_wait_ms: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 10.0
    max_queued_requests: Positive = 256
    model_workers: Positive | None = None
    infinity_batch_size: Positive = 32
    remote_url: str | None = None
    remote_embed_url: str | None = None
    remote_sparse_url: str | None = None
    remote_rerank_url: str | None = None
    remote_kind: RemoteKind = "auto"
    remote_model: str | None = None
    remote_rerank_model: str | None = None
    remote_api_key: str | None = None
    remote_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    remote_max_concurrency: Positive = 32
    remote_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    remote_probe_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    breaker_threshold: Positive = 5
    breaker_cooldown_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    api_key: tuple[str, ...] = ()
    protect_metrics: bool = False
    cors_origins: tuple[str, ...] = ()
    log_format: Literal["text", "json"] = "text"
    shutdown_timeout_s: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 30
    runpod_concurrency: Positive = 16
    runpod_max_output_mb: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 20.0
    http_read_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    http_keepalive_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 5
    http_write_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    http_max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 24)] = 65_536
    http_max_headers: Annotated[int, msgspec.Meta(ge=8, le=10_000)] = 100
    http_max_request_line_bytes: Annotated[int, msgspec.Meta(ge=256, le=1 << 20)] = 8192
    max_connections: Positive = 1024
    cache_max_items: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    cache_max_mb: Positive = 256
    redis_url: str | None = None
    cache_ttl_s: Positive = 86_400

    @property
    def model_dtype(self) -> ModelDtype:
        """DTYPE, or where it is left at auto, what the deprecated USE_FP16 said: false was
        float32 everywhere, true was auto's choice on a GPU."""
        if self.dtype == "auto" and self.use_fp16 is False:
            return "float32"
        return self.dtype

    @property
    def lexical_colbert_chain(self) -> Chain:
        """LEXICAL_COLBERT_BACKENDS, or what the deprecated SPARSE_BACKENDS says where set."""
        if self.sparse_backends is not None:
            return self.sparse_backends
        return self.lexical_colbert_backends

    def deprecations(self) -> list[str]:
        """What start-up warns about: settings set under a name that is going away."""
        lines = []
        if self.use_fp16 is not None:
            lines.append(
                f"USE_FP16 is deprecated; set DTYPE instead (USE_FP16={str(self.use_fp16).lower()} "
                f"is DTYPE={self.model_dtype} here)"
            )
        if self.sparse_backends is not None:
            chain = ",".join(self.sparse_backends) or "none"
            lines.append(
                "SPARSE_BACKENDS is deprecated (it also routes ColBERT and hybrid passes); set "
                f"LEXICAL_COLBERT_BACKENDS={chain} instead, which it overrides here"
            )
        return lines

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks; a credential must not.
        shown = ", ".join(
            f"{f.name}={'***' if f.name in _SECRETS and v else v!r}"
            for f in msgspec.structs.fields(self)
            for v in (getattr(self, f.name),)
        )
        return f"Settings({shown})"


# A URL may hold a password, or a token in its query.
_SECRETS = frozenset(
    {
        "remote_api_key",
        "api_key",
        "redis_url",
        "remote_url",
        "remote_embed_url",
        "remote_sparse_url",
        "remote_rerank_url",
    }
)


HELP: dict[str, str] = {
    "device": "Where models run: auto (cuda when torch sees a GPU, NVIDIA or ROCm), cuda, cpu.",
    "embed_backends": "Backends for dense embeddings, in order of preference "
    "(comma-separated: flag, infinity, remote; none: not served).",
    "lexical_colbert_backends": "Backends for bge-m3's lexical weights (sparse vectors), "
    "ColBERT vectors and hybrid passes (flag, or remote when the remote is another instance "
    "of this service; none: not served).",
    "rerank_backends": "Backends for rerank scores, in order of preference (flag, infinity, "
    "remote; none: not served).",
    "embedding_model_name": "bge-m3 model: a Hugging Face repo id or a local folder "
    "(with colbert_linear.pt and sparse_linear.pt for sparse and ColBERT output).",
    "reranker_model_name": "Cross-encoder reranker: a Hugging Face repo id or a local folder.",
    "models_dir": "Folder that bge-serve download filled: a repo id in EMBEDDING_MODEL_NAME / "
    "RERANKER_MODEL_NAME loads MODELS_DIR/<its name> (BAAI/bge-m3: MODELS_DIR/bge-m3), never "
    "the hub; start-up fails if it is missing. Also download's default --to.",
    "embedding_served_name": "The embedding model's name in responses and /v1/models, and what "
    "a request's model must say (unset: the hub id EMBEDDING_MODEL_NAME is, else the repo of a "
    "Hugging Face cache snapshot, else the folder's name as configured, with BAAI/ before a BGE "
    "model's name such as bge-m3; never a path, never config.json's _name_or_path).",
    "reranker_served_name": "The reranker's public name, as EMBEDDING_SERVED_NAME "
    "(unset: derived from RERANKER_MODEL_NAME the same way).",
    "model_aliases": "More names a request's model may use for either model, comma-separated "
    "(e.g. text-embedding-3-small for clients that cannot change it).",
    "embedding_size": "Expected dense dimension; start-up fails if the model differs "
    "(unset: not checked).",
    "sparse_token_mapping": "How sparse indices are made from token ids, on every route "
    "(TEI's /embed_sparse included): tokenizer (index = token id, the space TEI, vLLM and "
    "FlagEmbedding key by) or hash (sha256 of the id modulo SPARSE_INDEX_SPACE: for "
    "collections built by bge_inference_service or by this service before its default "
    "became tokenizer).",
    "sparse_index_space": "Size of the hashed sparse index space (hash mapping only).",
    "dtype": "What models compute in: auto (float16 on a GPU; bfloat16 on a CPU with "
    "AVX512-BF16 or AMX, float32 on other CPUs), float32, float16, bfloat16. Answers are "
    "float32 whatever it is.",
    "use_fp16": "Deprecated, use DTYPE: false is DTYPE=float32, true is DTYPE=auto.",
    "sparse_backends": "Deprecated, use LEXICAL_COLBERT_BACKENDS (this name's old one); "
    "where set, it overrides it.",
    "torch_compile": "Compile the flag backend's models with torch.compile (dynamic shapes) "
    "at start-up: a slower start (about a minute for a tiny model on 2 CPU cores), then the "
    "same answers from fused kernels.",
    "packed_passes": "Run the flag backend's BERT and XLM-RoBERTa passes (bge-m3, "
    "bge-reranker-v2-m3) on their texts' real tokens, packed end to end, instead of padding "
    "every text to the longest: the same answers, with a pass's padding never computed. Off "
    "under TORCH_COMPILE (its graph is the padded one).",
    "host": "Interface to listen on.",
    "port": "Port to listen on (0 picks a free one).",
    "log_level": "Log level.",
    "max_batch_size": "Most texts (or documents) in one request; more is answered 413.",
    "max_text_chars": "Most characters in one text; longer is answered 413.",
    "max_request_bytes": "Largest request body in bytes; larger is answered 413.",
    "max_request_tokens": "Most tokens one request's texts may hold after truncation (what its "
    "forward passes cost), counted before any pass; more is answered 413 naming the count. "
    "The default lets 2,048 texts of 1,024 tokens through.",
    "max_response_bytes": "Largest answer one request may get, estimated before any forward "
    "pass from its token counts as JSON numbers (ColBERT: rows x dimension x 22 bytes; "
    "/tokenize: ~80 bytes a token); larger is answered 413 naming the estimate. A request "
    "at the limit costs about 4x its answer in memory while it is built and sent.",
    "max_inflight_response_bytes": "Most answer bytes (estimated as for MAX_RESPONSE_BYTES) "
    "all requests being computed at once may take; a request past it is answered 429 with "
    "Retry-After. One request alone always goes. Bounds the process's memory, not one "
    "request's: about 4x this above idle at most.",
    "max_input_tokens": "Tokens kept per text (unset: the model's maximum).",
    "openai_token_encoding": "tiktoken encoding that decodes token-id arrays sent as "
    "/v1/embeddings' input (what LangChain's OpenAIEmbeddings sends by default) back to text: "
    "cl100k_base (LangChain's fallback for a model name tiktoken does not know) ships with the "
    "service; another name loads through tiktoken, which downloads it unless TIKTOKEN_CACHE_DIR "
    "holds it; off: token arrays are answered 422.",
    "reranker_max_tokens": "Tokens per query+document pair for the reranker "
    "(the query keeps at most 3/4; FlagReranker's default is 512).",
    "truncate": "Truncate texts longer than the token limit; when off they are answered 413.",
    "max_batch_tokens": "Padded tokens in one forward pass; bounds activation memory.",
    "batch_wait_ms": "Longest the flag backend's micro-batcher waits for a burst of "
    "requests to end before a pass that still has room (a lone request waits ~1 ms).",
    "max_queued_requests": "Requests waiting or running per backend model (per remote URL "
    "for the remote backend); more is answered 429 with Retry-After.",
    "model_workers": "Forward passes the flag backend runs at once per model, each with "
    "cores/workers torch threads (unset: 2 on a CPU with 2 or more cores, 1 on a GPU).",
    "infinity_batch_size": "infinity_emb's own batch size (infinity backend only).",
    "remote_url": "Base URL of the remote engine (TEI, Infinity or another instance of "
    "this service) the remote backend calls for every operation.",
    "remote_embed_url": "Remote for dense embeddings, overriding REMOTE_URL (TEI serves one "
    "model per container).",
    "remote_sparse_url": "Remote for sparse, ColBERT and hybrid embeddings, overriding REMOTE_URL.",
    "remote_rerank_url": "Remote for rerank scores, overriding REMOTE_URL.",
    "remote_kind": "What the remote is: auto (found out at start-up from /health, /info, "
    "/models or /v1/models and /version), tei, infinity, self (another instance of this "
    "service), runpod (a RunPod Serverless endpoint running bge-runpod-worker; "
    "REMOTE_URL=https://api.runpod.ai/v2/<id>), or vllm (vllm serve --runner pooling, one "
    "pooling task per instance: embed, token_classify or token_embed of bge-m3 served as "
    "BgeM3EmbeddingModel, classify of a reranker; each at its operation's URL).",
    "remote_model": "Embedding model name sent to a remote that serves several (Infinity; "
    "unset: the one it lists).",
    "remote_rerank_model": "Reranker model name sent to a remote that serves several "
    "(Infinity; unset: the one it lists).",
    "remote_api_key": "Sent to the remote as Authorization: Bearer; never logged.",
    "remote_timeout_s": "Deadline of one call to the remote, retries and queueing included; "
    "past it the call fails over to the next backend, or answers 504.",
    "remote_max_concurrency": "Requests in flight to each remote URL; more wait their turn, "
    "up to MAX_QUEUED_REQUESTS calls waiting or running per URL, past which a call is "
    "answered 429 with Retry-After. Keep it at least the remote's batch size (Infinity's "
    "--batch-size, default 32): the remote batches only what it is sent at once.",
    "remote_retries": "Retries of a call the remote refused for now (connection error, "
    "timeout, 429, 503), with jittered exponential backoff and Retry-After honoured.",
    "remote_probe_interval_s": "How often a remote that is down (or was down at start-up) "
    "is probed until it answers again.",
    "breaker_threshold": "Consecutive failures after which a backend is skipped for "
    "BREAKER_COOLDOWN_S (its calls go to the next backend of the chain).",
    "breaker_cooldown_s": "Seconds a failing backend is skipped before one call probes it.",
    "api_key": "Keys clients must send (comma-separated; Authorization: Bearer <key> or "
    "X-API-Key: <key>); unset: no key needed. Never logged.",
    "protect_metrics": "Require a key for /health*, /metrics and /docs too (probes then send one).",
    "cors_origins": "Browser origins allowed to call the API (comma-separated, e.g. "
    "https://app.example.com; * for any); unset: no cross-origin access.",
    "log_format": "text, or json for one JSON object per line.",
    "cache_max_items": "Embedding cache entries kept in process (one per text and output: dense, "
    "sparse or ColBERT); 0 disables the cache.",
    "cache_max_mb": "Most memory the in-process embedding cache holds (ColBERT entries are "
    "large); the least recently used entries go first.",
    "redis_url": "Cache embeddings in Redis instead (redis://host:6379/0), shared by replicas; "
    "a Redis that is down costs cache hits, never answers. Never logged.",
    "cache_ttl_s": "How long a Redis cache entry lives.",
    "http_read_timeout_s": "Time a client has to send a whole request, headers and body, from "
    "its first byte (a new connection: from connecting); a slower one gets 408 and is "
    "disconnected.",
    "http_keepalive_s": "How long an idle keep-alive connection stays open between requests "
    "(behind a load balancer, make it longer than the balancer's idle timeout).",
    "http_write_timeout_s": "How long an answer may wait on a client that does not read it "
    "(its connection's send buffer full); then the connection is closed and the answer dropped.",
    "http_max_header_bytes": "Largest request head (request line and headers); a larger one "
    "gets 431 and the connection is closed.",
    "http_max_headers": "Most header lines in one request; more get 431 and the connection is "
    "closed.",
    "http_max_request_line_bytes": "Longest request line (method, URL, version); a longer one "
    "gets 414 and the connection is closed.",
    "max_connections": "Open connections at most; past it, the connection whose answer has "
    "waited longest on a client that does not read (else the one that has waited longest on its "
    "request headers, else the longest idle one) is closed to make room, and when every "
    "connection is busy the new one gets 429 with Retry-After. Keep it below the process's "
    "open-file limit (ulimit -n).",
    "shutdown_timeout_s": "On SIGTERM or SIGINT, how long requests already accepted may take "
    "to get their answers before the process exits (one still running then gets 503).",
    "runpod_concurrency": "Jobs one bge-runpod-worker takes at once (its concurrency_modifier); "
    "the micro-batcher shares forward passes among them.",
    "runpod_max_output_mb": "The largest answer (MB, 10^6 bytes) a bge-runpod-worker job "
    "returns. RunPod refuses a job result over 20 MB and the job never completes; a larger "
    "answer is a 413 that names its size instead. ColBERT vectors are the large ones: ask for "
    '"encoding_format": "base64" (a quarter the size) or send fewer texts per job.',
}


def env_name(field: str) -> str:
    return field.upper()


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bge-serve",
        description="BGE Inference Service: bge-m3 dense, sparse and ColBERT vectors and "
        "bge-reranker scores behind OpenAI-, Cohere-, TEI- and Infinity-compatible routes.",
        epilog="bge-serve download --to DIR fetches the models these settings name into DIR "
        "(see bge-serve download --help).",
    )
    defaults = Settings()
    for field in msgspec.structs.fields(Settings):
        env = env_name(field.name)
        default = getattr(defaults, field.name)
        text = f"{HELP[field.name]} [env {env}; default {default}]"
        if field.type in (bool, bool | None):
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        else:
            parser.add_argument(_flag(field.name), dest=field.name, metavar=env, help=text)
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from defaults, then ``environ``, then ``argv``; exits 2 on a bad value."""
    parser = build_parser()
    return _settings(parser, vars(parser.parse_args(argv)), environ)


def load_settings_and_rest(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[Settings, list[str]]:
    """``load_settings``, leaving the arguments that are not settings to the caller (the
    RunPod worker's, which its SDK reads)."""
    parser = build_parser()
    known, rest = parser.parse_known_args(argv)
    return _settings(parser, vars(known), environ), rest


def _settings(
    parser: argparse.ArgumentParser, args: dict[str, object], environ: Mapping[str, str] | None
) -> Settings:
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field in msgspec.structs.fields(Settings):
        name = env_name(field.name)
        value = args[field.name] if args[field.name] is not None else env.get(name, "")
        if value == "":
            continue
        if _is_list(field.type) and isinstance(value, str):
            items = [item.strip() for item in value.split(",") if item.strip()]
            value = [] if items == ["none"] else items
        raw[name] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        parser.error(f"invalid setting: {_settings_error(exc)}")


def _unannotated(annotation: object) -> object:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _is_list(annotation: object) -> bool:
    """A comma-separated setting: a tuple, or a tuple or None (a deprecated alias)."""
    unwrapped = _unannotated(annotation)
    kinds = get_args(unwrapped) if isinstance(unwrapped, types.UnionType) else (unwrapped,)
    return any(get_origin(kind) is tuple for kind in kinds)


def _settings_error(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int` >= 1 - at `$.PORT`"; lead with the variable name.
    message, _, path = str(exc).rpartition(" - at ")
    return f"{path.strip('`').removeprefix('$.')}: {message}" if message else str(exc)
