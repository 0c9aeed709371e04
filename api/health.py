"""Health: ``GET /health`` (200 when every model is loaded and every backend healthy, else
503, with what serves what), ``/health/live`` (the process serves HTTP) and
``/health/ready`` (every served operation has a backend that can take work now)."""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Response, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from api.docs import answers
from engine.errors import EngineError
from engine.inference import InferenceEngine
from engine.settings import Settings
from engine.sparse_mapping import SparseMapping
from engine.types import Operation

__all__ = ["health", "live", "ready"]


class BackendStatus(msgspec.Struct, kw_only=True):
    loaded: bool
    healthy: bool
    device: str
    detail: str
    stats: dict[str, int]
    dtype: str | None = None  # float32, float16, bfloat16; None for a remote


class Health(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: Literal["ok", "loading", "degraded"]
    embedder_loaded: bool
    reranker_loaded: bool
    device: str
    embedding_model: str
    reranker_model: str
    routes: dict[str, str | None]
    chains: dict[str, list[str]]
    backends: dict[str, BackendStatus]
    max_batch_size: int  # MAX_BATCH_SIZE: a front end splits larger batches to this
    # The space every route's sparse indices are in (absent where sparse is not served;
    # the tokenizer's index space, its vocabulary, once the model has loaded).
    sparse_mapping: SparseMapping | None = None
    sparse_index_space: int | None = None
    error: str | None = None
    warnings: list[str] = msgspec.field(default_factory=list)  # e.g. random (demo) weights


_HEALTHY = {
    "status": "ok",
    "embedder_loaded": True,
    "reranker_loaded": True,
    "device": "cuda",
    "embedding_model": "BAAI/bge-m3",
    "reranker_model": "BAAI/bge-reranker-v2-m3",
    "routes": {"embed": "remote", "rerank": "remote", "lexical_colbert": "flag"},
    "chains": {
        "embed": ["remote", "flag"],
        "rerank": ["remote", "flag"],
        "lexical_colbert": ["flag"],
    },
    "backends": {
        "flag": {
            "loaded": True,
            "healthy": True,
            "device": "cuda",
            "detail": "",
            "stats": {"embed.forward_passes": 1204},
            "dtype": "float16",
        },
        "remote": {
            "loaded": True,
            "healthy": True,
            "device": "remote",
            "detail": "http://tei-m3:80: TEI 1.9.3 serving embed (BAAI/bge-m3)",
            "stats": {},
        },
    },
    "max_batch_size": 2048,
    "sparse_mapping": "tokenizer",
    "sparse_index_space": 250002,
}


@get(
    "/health",
    tags=["Service"],
    summary="Readiness and what serves what (503 while loading or degraded, same body)",
    cache=False,
    responses=answers(Health, _HEALTHY, {}),
)
async def health(engine: InferenceEngine, settings: Settings) -> Response[Health]:
    state = engine.health()
    devices = sorted({b.device for b in state.backends.values()})
    mapping, index_space = _sparse_space(engine, settings)
    body = Health(
        status=state.status,
        embedder_loaded=state.loaded.get(Operation.EMBED, False)
        or state.loaded.get(Operation.LEXICAL_COLBERT, False),
        reranker_loaded=state.loaded.get(Operation.RERANK, False),
        device=",".join(devices),
        embedding_model=engine.names.embedding,
        reranker_model=engine.names.reranker,
        routes={str(op): name for op, name in state.serving.items()},
        chains={str(op): names for op, names in state.chains.items()},
        backends={
            name: BackendStatus(
                loaded=b.loaded,
                healthy=b.healthy,
                device=b.device,
                detail=b.detail,
                stats=dict(b.stats),
                dtype=b.dtype or None,
            )
            for name, b in state.backends.items()
        },
        max_batch_size=settings.max_batch_size,
        sparse_mapping=mapping,
        sparse_index_space=index_space,
        error=state.error,
        warnings=list(engine.warnings),
    )
    status = HTTP_200_OK if state.status == "ok" else HTTP_503_SERVICE_UNAVAILABLE
    return Response(body, status_code=status)


def _sparse_space(
    engine: InferenceEngine, settings: Settings
) -> tuple[SparseMapping | None, int | None]:
    if Operation.LEXICAL_COLBERT not in engine.operations:
        return None, None
    try:
        return settings.sparse_token_mapping, engine.sparse_index_space()
    except EngineError:
        # Loading, or a remote that is down: the tokenizer's vocabulary is not known yet.
        return settings.sparse_token_mapping, None


class Liveness(msgspec.Struct, kw_only=True):
    status: Literal["alive"] = "alive"


class Readiness(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: Literal["ready", "loading", "not_ready"]
    reasons: list[str] = msgspec.field(default_factory=list)


@get(
    "/health/live",
    tags=["Service"],
    summary="Liveness: the process serves HTTP (a down remote or a loading model is not death)",
    cache=False,
    responses=answers(Liveness, {"status": "alive"}, {}),
)
async def live() -> Liveness:
    return Liveness()


@get(
    "/health/ready",
    tags=["Service"],
    summary="Readiness: 200 when every served operation has a loaded, healthy backend; "
    "else 503 with the reasons",
    cache=False,
    responses=answers(Readiness, {"status": "ready"}, {}),
)
async def ready(engine: InferenceEngine) -> Response[Readiness]:
    state = engine.health()
    if state.status == "loading":
        body = Readiness(status="loading", reasons=["the models are still loading"])
    elif state.error is not None:
        body = Readiness(status="not_ready", reasons=[f"start-up failed: {state.error}"])
    else:
        # A chain is ready when one of its backends is: the router falls through to it.
        reasons = [
            f"{operation}: no loaded, healthy backend ("
            + "; ".join(f"{name}: {state.backends[name].detail or 'down'}" for name in names)
            + ")"
            for operation, names in state.chains.items()
            if not any(state.backends[n].loaded and state.backends[n].healthy for n in names)
        ]
        body = (
            Readiness(status="not_ready", reasons=reasons) if reasons else Readiness(status="ready")
        )
    status = HTTP_200_OK if body.status == "ready" else HTTP_503_SERVICE_UNAVAILABLE
    return Response(body, status_code=status)
