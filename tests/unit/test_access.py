"""API keys and CORS, through the app (in-process client)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from engine import InferenceEngine, Operation, Settings
from tests.conftest import wait_started
from tests.fake_backend import FakeBackend

KEYS = ("key-one", "key-two")


def client_for(**settings: Any) -> TestClient[Any]:
    config = Settings(**settings)
    engine = InferenceEngine(config, {op: [FakeBackend()] for op in Operation})
    return TestClient(create_app(config, engine))


@pytest.fixture
def locked() -> Iterator[TestClient[Any]]:
    with client_for(api_key=KEYS) as client:
        wait_started(client)
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer key-one"},
        {"Authorization": "bearer key-two"},  # the second key, any case of the scheme
        {"X-API-Key": "key-two"},
    ],
)
def test_a_valid_key_passes(locked: TestClient[Any], headers: dict[str, str]) -> None:
    response = locked.post("/v1/embeddings", json={"input": "hi"}, headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "an API key is required"),
        ({"Authorization": "Bearer key-on"}, "the API key is not valid"),
        ({"Authorization": "Bearer key-one-and-more"}, "the API key is not valid"),
        (
            {"Authorization": "Basic a2V5LW9uZQ=="},
            "Authorization carries a Basic credential: send Authorization: Bearer <key>",
        ),
        # The key without "Bearer ": told how to send it, and the key is not echoed.
        (
            {"Authorization": "key-one"},
            "Authorization carries a value without a scheme: send Authorization: Bearer <key>",
        ),
        (
            {"Authorization": "Token key-one"},
            "Authorization carries a Token credential: send Authorization: Bearer <key>",
        ),
        ({"Authorization": "Bearer "}, "Authorization carries no key after Bearer"),
        ({"X-API-Key": ""}, "an API key is required"),
    ],
)
def test_a_missing_or_wrong_key_is_a_401_envelope(
    locked: TestClient[Any], headers: dict[str, str], message: str
) -> None:
    response = locked.post("/v1/embeddings", json={"input": "hi"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="bge-serve"')
    error = response.json()["error"]
    assert error["message"].startswith(message)
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert "key-one" not in response.text


def test_tei_routes_refuse_in_teis_shape(locked: TestClient[Any]) -> None:
    response = locked.post("/embed", json={"inputs": "hi"})
    assert response.status_code == 401
    assert response.json()["error_type"] == "Validation"
    assert "www-authenticate" in response.headers


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready", "/docs"])
def test_health_and_docs_stay_open(locked: TestClient[Any], path: str) -> None:
    assert locked.get(path).status_code == 200


def test_protect_metrics_closes_them_too() -> None:
    with client_for(api_key=KEYS, protect_metrics=True) as client:
        assert client.get("/health/live").status_code == 401
        assert client.get("/docs").status_code == 401
        assert client.get("/health/live", headers={"X-API-Key": "key-one"}).status_code == 200


def test_no_key_configured_means_open() -> None:
    with client_for() as client:
        wait_started(client)
        assert client.post("/v1/embeddings", json={"input": "hi"}).status_code == 200


def test_the_key_is_masked_wherever_settings_are_shown() -> None:
    assert "key-one" not in repr(Settings(api_key=KEYS))


def test_cors_allows_listed_origins_only_with_preflight_before_the_key() -> None:
    origin = "https://app.example.com"
    with client_for(api_key=KEYS, cors_origins=(origin,)) as client:
        preflight = client.options(
            "/v1/embeddings",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code in (200, 204)
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        wait_started(client)
        answer = client.post(
            "/v1/embeddings",
            json={"input": "hi"},
            headers={"Origin": origin, "Authorization": "Bearer key-one"},
        )
        assert answer.headers["access-control-allow-origin"] == origin
        other = client.post(
            "/v1/embeddings",
            json={"input": "hi"},
            headers={"Origin": "https://evil.example", "Authorization": "Bearer key-one"},
        )
        assert "access-control-allow-origin" not in other.headers


def test_no_cors_by_default() -> None:
    with client_for() as client:
        wait_started(client)
        answer = client.post(
            "/v1/embeddings", json={"input": "hi"}, headers={"Origin": "https://app.example.com"}
        )
        assert "access-control-allow-origin" not in answer.headers
