"""/metrics through the app: it parses as Prometheus text, and counts what happened."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from engine import InferenceEngine, Operation, Settings
from engine.types import Scores
from tests.conftest import wait_started
from tests.fake_backend import FakeBackend


class Failing(FakeBackend):
    @property
    def name(self) -> str:
        return "remote"

    async def score(self, query: str, documents: Sequence[str]) -> Scores:
        raise RuntimeError("the remote broke")


def scrape(client: TestClient[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("bge_"), family.name
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_requests_items_tokens_errors_and_fall_throughs_are_counted() -> None:
    settings = Settings(breaker_threshold=2)
    fake = FakeBackend()
    chains = {
        Operation.EMBED: [fake],
        Operation.LEXICAL_COLBERT: [fake],
        Operation.RERANK: [Failing(), fake],
    }
    with TestClient(create_app(settings, InferenceEngine(settings, chains))) as client:
        wait_started(client)
        client.post("/v1/embeddings", json={"input": ["one text", "two words here"]})
        client.post("/v1/embeddings", json={"input": []})
        # Refused before the handler, by the body's media type: counted as answered.
        client.post("/v1/embeddings", content=b"{}", headers={"content-type": "text/plain"})
        client.post("/embed", content=b"{}", headers={"content-type": "text/plain"})
        for _ in range(3):
            client.post("/rerank", json={"query": "q", "texts": ["apple", "zebra"]})
        client.get("/metrics")
        samples = scrape(client)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    route = {"route": "/v1/embeddings", "dialect": "OpenAI"}
    assert value("bge_http_requests_total", status="200", **route) == 1
    assert value("bge_http_requests_total", status="422", **route) == 1
    assert value("bge_http_requests_total", status="415", **route) == 1
    assert value("bge_http_requests_total", route="/embed", dialect="TEI", status="415") == 1
    assert not any(dict(labels).get("status") == "500" for _, labels in samples)
    assert value("bge_http_requests_total", route="/rerank", dialect="TEI", status="200") == 3
    assert value("bge_http_request_duration_seconds_count", status="200", **route) == 1
    assert value("bge_http_request_duration_seconds_count", status="422", **route) == 1
    assert not any(dict(labels).get("route") == "/metrics" for _, labels in samples)
    assert value("bge_items_total", operation="embed") == 2
    assert value("bge_tokens_total", operation="embed") == 4 + 5  # the fake's count
    assert value("bge_items_total", operation="rerank") == 6
    # Two failures open the breaker; the third call skips the remote without trying it.
    assert value("bge_backend_errors_total", backend="remote", kind="backend") == 2
    assert value("bge_fall_throughs_total", operation="rerank", backend="remote") == 3
    assert value("bge_circuit_breaker_open", backend="remote") == 1
    assert value("bge_backend_up", backend="fake") == 1
    assert value("bge_model_load_seconds", backend="fake") >= 0
    # The fake does not split token counts by text: two misses, nothing stored.
    assert value("bge_cache_misses_total", store="memory") == 2
    assert value("bge_cache_hits_total", store="memory") == 0


def test_metrics_are_open_unless_protected() -> None:
    settings = Settings(api_key=("k",), protect_metrics=True)
    engine = InferenceEngine(settings, {op: [FakeBackend()] for op in Operation})
    with TestClient(create_app(settings, engine)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "k"}).status_code == 200
