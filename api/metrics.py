"""``GET /metrics``: Prometheus text format, every name prefixed ``bge_``.

HTTP traffic is counted by a middleware as it happens; everything the engine and its
backends count (items, tokens, passes, queues, errors, fall-throughs, breakers, load
times) is read from them at scrape time by a collector, so the request path pays
nothing for it. Each app has its own registry: two apps in one process (tests) do
not share counts, and nothing is registered at import.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from litestar import Response, get
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from api.disconnect import ClientDisconnected
from api.errors import problem_of
from api.http_limits import ConnectionStats
from engine.inference import InferenceEngine

__all__ = ["DIALECT_KEY", "Metrics", "metrics_route"]

# A handler that serves several dialects on one path (POST /rerank) names the one the
# request spoke under this scope key.
DIALECT_KEY = "bge_dialect"
_CONTENT_TYPE = "text/plain; version=0.0.4"  # Litestar adds the charset
# Request latency: from a cached short text (~1 ms) to a long batch on a CPU (~minutes).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _EngineCollector(Collector):
    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        engine = self._engine
        telemetry = engine.telemetry
        state = engine.health()

        items = CounterMetricFamily(
            "bge_items", "Texts, documents or pairs processed", labels=["operation"]
        )
        tokens = CounterMetricFamily(
            "bge_tokens", "Tokens processed, special tokens included", labels=["operation"]
        )
        for operation in sorted(engine.operations):
            items.add_metric([operation], telemetry.items[operation])
            tokens.add_metric([operation], telemetry.tokens[operation])
        yield items
        yield tokens

        errors = CounterMetricFamily(
            "bge_backend_errors", "Calls a backend failed or refused", labels=["backend", "kind"]
        )
        for (backend, kind), count in sorted(telemetry.backend_errors.items()):
            errors.add_metric([backend, kind], count)
        yield errors
        passed = CounterMetricFamily(
            "bge_fall_throughs",
            "Calls that went past a backend to the next one in the chain",
            labels=["operation", "backend"],
        )
        for (operation, backend), count in sorted(telemetry.fall_throughs.items()):
            passed.add_metric([operation, backend], count)
        yield passed

        up = GaugeMetricFamily(
            "bge_backend_up", "1 when the backend is loaded and healthy", labels=["backend"]
        )
        breaker = GaugeMetricFamily(
            "bge_circuit_breaker_open",
            "1 while the backend is skipped after repeated failures",
            labels=["backend"],
        )
        load = GaugeMetricFamily(
            "bge_model_load_seconds", "Time the backend took to load its models", labels=["backend"]
        )
        passes = CounterMetricFamily(
            "bge_forward_passes", "Forward passes run", labels=["backend", "model"]
        )
        queued = GaugeMetricFamily(
            "bge_queue_depth",
            "Requests waiting or running in the backend, per model",
            labels=["backend", "model"],
        )
        sizes = HistogramMetricFamily(
            "bge_batch_size", "Items per forward pass", labels=["backend", "model"]
        )
        for name, health in sorted(state.backends.items()):
            up.add_metric([name], float(health.loaded and health.healthy))
            breaker.add_metric([name], float(engine.breaker_open(name)))
            if name in telemetry.load_seconds:
                load.add_metric([name], telemetry.load_seconds[name])
            for key, value in sorted(health.stats.items()):
                model, _, stat = key.rpartition(".")
                if stat == "forward_passes":
                    passes.add_metric([name, model], value)
                elif stat in ("queued_requests", "in_flight"):
                    queued.add_metric([name, model or name], value)
            for model, histogram in sorted(health.batch_sizes.items()):
                sizes.add_metric(
                    [name, model], buckets=histogram.cumulative(), sum_value=histogram.total
                )
        yield from (up, breaker, load, passes, queued, sizes)

        cache = engine.cache_stats
        for name, value, what in (
            ("bge_cache_hits", cache.hits, "Texts answered from the embedding cache"),
            ("bge_cache_misses", cache.misses, "Texts the cache did not hold, computed"),
            ("bge_cache_evictions", cache.evictions, "In-process cache entries pushed out"),
            ("bge_cache_errors", cache.errors, "Redis calls that failed (served uncached)"),
            ("bge_cache_invalid", cache.invalid, "Entries read that did not fit the model"),
        ):
            family = CounterMetricFamily(name, what, labels=["store"])
            family.add_metric([engine.cache_store], value)
            yield family


class _ConnectionCollector(Collector):
    def __init__(self, stats: ConnectionStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats
        yield GaugeMetricFamily("bge_http_connections_open", "Open HTTP connections", stats.open)
        closed = CounterMetricFamily(
            "bge_http_connections_closed",
            "Connections the server closed: read_timeout (HTTP_READ_TIMEOUT_S), write_timeout "
            "(HTTP_WRITE_TIMEOUT_S), evicted (to make room under MAX_CONNECTIONS), refused (429: "
            "MAX_CONNECTIONS, all busy), bad_head (400/414/431: a request head past a limit)",
            labels=["reason"],
        )
        for reason, count in (
            ("read_timeout", stats.read_timeouts),
            ("write_timeout", stats.write_timeouts),
            ("evicted", stats.evicted),
            ("refused", stats.refused),
            ("bad_head", stats.heads_refused),
        ):
            closed.add_metric([reason], count)
        yield closed


class Metrics:
    """One app's registry: the HTTP counters and the engine's (and server's) collectors."""

    def __init__(self, engine: InferenceEngine, connections: ConnectionStats | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bge_http_requests",
            "HTTP requests answered, by route, dialect and status",
            ["route", "dialect", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bge_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer",
            ["route", "dialect", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine))
        if connections is not None:  # an app served by bge-serve, not a test client
            self.registry.register(_ConnectionCollector(connections))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self) -> ASGIMiddleware:
        return _HttpMetrics(self)


class _HttpMetrics(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)
    exclude_path_pattern = ("^/metrics$",)  # a scrape does not count itself

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        began = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await next_app(scope, receive, sending)
        except Exception as exc:
            # Raised by a middleware below (a refused body): the status the exception
            # handler around this stack answers, not a 500.
            status = _answered_status(exc, _dialect(scope.get("route_handler")))
            raise
        finally:
            route = str(scope.get("path_template") or scope["path"])
            dialect = str(scope.get(DIALECT_KEY) or _dialect(scope.get("route_handler")))
            metrics = self._metrics
            metrics.requests.labels(route, dialect, str(status)).inc()
            metrics.latency.labels(route, dialect, str(status)).observe(time.perf_counter() - began)


def _answered_status(exc: Exception, dialect: str) -> int:
    if isinstance(exc, ClientDisconnected):
        return 499
    problem = problem_of(exc)
    return problem.status.tei_http if dialect == "TEI" else problem.status.http


def _dialect(handler: object) -> str:
    """A route's dialect is its first OpenAPI tag (its controller's, e.g. "TEI")."""
    resolve = getattr(handler, "resolve_tags", None)
    tags = resolve() if callable(resolve) else None
    return str(next(iter(tags), "Service")) if tags else "Service"


def metrics_route(metrics: Metrics) -> Any:
    @get(
        "/metrics",
        tags=["Service"],
        summary="Prometheus metrics (text format); every name starts with bge_",
        include_in_schema=False,
        cache=False,
        media_type=_CONTENT_TYPE,
    )
    async def scrape() -> Response[bytes]:
        return Response(metrics.exposition(), media_type=_CONTENT_TYPE)

    return scrape
