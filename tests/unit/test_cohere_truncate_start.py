"""Cohere's ``truncate: START`` where a backend of the chain cannot cut a text's start:
a 422 that names Cohere's field, not TEI's (in-process app over the fake backend)."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from engine import InferenceEngine, Operation, Settings
from tests.conftest import wait_started
from tests.fake_backend import FakeBackend


@pytest.mark.parametrize("path", ["/v1/embed", "/v2/embed"])
def test_start_refused_by_the_chain_names_truncate(path: str) -> None:
    settings = Settings()
    engine = InferenceEngine(settings, {op: [FakeBackend()] for op in Operation})
    with TestClient(create_app(settings, engine)) as client:
        wait_started(client)
        response = client.post(path, json={"texts": ["a b"], "truncate": "START"})
        assert response.status_code == 422, response.text
        error: dict[str, Any] = response.json()["error"]
        assert error["param"] == "truncate", error
        assert error["message"].startswith("`truncate`: START"), error
        assert "fake" in error["message"] and "truncation_direction" not in error["message"]
        # END needs nothing of the backend.
        assert client.post(path, json={"texts": ["a b"], "truncate": "END"}).status_code == 200
