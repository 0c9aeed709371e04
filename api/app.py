"""The Litestar application: routes of every dialect over one engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from litestar import Litestar
from litestar.di import Provide
from litestar.exceptions import HTTPException

from api.access import cors_config, key_guard
from api.bare_rerank import bare_rerank
from api.body import BodyGuard, strict_body
from api.cohere import CohereController
from api.disconnect import ClientDisconnected
from api.docs import docs_assets, openapi_config
from api.drain import DrainAnswer
from api.errors import (
    client_disconnected,
    engine_error,
    http_error,
    malformed_body,
    unexpected_error,
)
from api.health import health, live, ready
from api.http_limits import ConnectionStats
from api.infinity import InfinityController
from api.m3_score import m3_score
from api.metrics import Metrics, metrics_route
from api.native import NativeController
from api.openai import OpenAIController
from api.reranker_service import RerankerServiceController
from api.tei import TeiController
from engine.errors import EngineError
from engine.inference import InferenceEngine
from engine.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("bge-inference-service")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(
    settings: Settings,
    engine: InferenceEngine,
    on_start_failure: Callable[[BaseException], None] | None = None,
    on_loaded: Callable[[], None] | None = None,
    connections: ConnectionStats | None = None,
) -> Litestar:
    """An app whose lifespan loads ``engine`` in the background.

    The port answers at once (``/health`` says "loading", model routes 503 with
    Retry-After) so orchestrators can tell a slow start from a dead one; a load
    that fails calls ``on_start_failure``, which the CLI uses to exit non-zero; one that
    succeeds calls ``on_loaded``.
    ``connections`` are the server protocol's counts, exported in ``/metrics``.
    """

    app_version = _version()
    metrics = Metrics(engine, connections)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        task = asyncio.create_task(engine.start(), name="load-models")

        def done(finished: asyncio.Task[None]) -> None:
            if finished.cancelled():
                return
            exc = finished.exception()
            if exc is None:
                log.info("models loaded; ready on http://%s:%s", settings.host, settings.port)
                if on_loaded is not None:
                    on_loaded()
            else:
                log.error("start-up failed: %s", exc)
                if on_start_failure is not None:
                    on_start_failure(exc)

        task.add_done_callback(done)
        try:
            yield
        finally:
            task.cancel()
            await engine.stop()

    return Litestar(
        route_handlers=[
            OpenAIController,
            NativeController,
            m3_score,
            CohereController,
            TeiController,
            InfinityController,
            RerankerServiceController,
            bare_rerank,
            health,
            live,
            ready,
            metrics_route(metrics),
            docs_assets(),
        ],
        dependencies={
            "engine": Provide(lambda: engine, sync_to_thread=False),
            "settings": Provide(lambda: settings, sync_to_thread=False),
            "version": Provide(lambda: app_version, sync_to_thread=False),
        },
        exception_handlers={
            ClientDisconnected: client_disconnected,
            EngineError: engine_error,
            HTTPException: http_error,
            UnicodeDecodeError: malformed_body,
            RecursionError: malformed_body,
            Exception: unexpected_error,
        },
        lifespan=[lifespan],
        # DrainAnswer innermost: it reads the dialect the handler writes into the scope.
        middleware=[metrics.middleware(), BodyGuard(), DrainAnswer(settings.shutdown_timeout_s)],
        before_request=strict_body,
        guards=[key_guard(settings)] if settings.api_key else [],
        cors_config=cors_config(settings),
        openapi_config=openapi_config(app_version),
        request_max_body_size=settings.max_request_bytes,
    )
