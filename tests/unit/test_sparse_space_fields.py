"""/health and /info say the sparse space: while loading (mapping known, the tokenizer's
vocabulary not yet), once loaded, and not at all where sparse is not served."""

from __future__ import annotations

import time

import pytest
from litestar.testing import TestClient

from api.app import create_app
from engine import InferenceEngine, Operation, Settings
from tests.fake_backend import FakeBackend
from tests.unit.test_app_loading import SlowBackend


@pytest.mark.parametrize(("mapping", "loaded_space"), [("tokenizer", 100), ("hash", 1_048_576)])
def test_health_says_the_space_while_loading_and_once_loaded(
    mapping: str, loaded_space: int
) -> None:
    backend = SlowBackend()
    settings = Settings(sparse_token_mapping=mapping)  # type: ignore[arg-type]
    engine = InferenceEngine(settings, {op: [backend] for op in Operation})
    with TestClient(create_app(settings, engine)) as client:
        loading = client.get("/health").json()
        assert loading["status"] == "loading"
        assert loading["sparse_mapping"] == mapping
        # The hash space is a setting; the tokenizer's is the vocabulary, read on load.
        if mapping == "hash":
            assert loading["sparse_index_space"] == loaded_space
        else:
            assert "sparse_index_space" not in loading
        backend.release.set()
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for said in (client.get("/health").json(), client.get("/info").json()):
            assert (said["sparse_mapping"], said["sparse_index_space"]) == (mapping, loaded_space)


def test_no_sparse_space_where_sparse_is_not_served() -> None:
    settings = Settings()
    backend = FakeBackend()
    engine = InferenceEngine(settings, {Operation.EMBED: [backend], Operation.RERANK: [backend]})
    with TestClient(create_app(settings, engine)) as client:
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = client.get("/health").json()
        assert "sparse_mapping" not in health and "sparse_index_space" not in health
        info = client.get("/info").json()
        assert info["sparse_mapping"] is None and info["sparse_index_space"] is None
