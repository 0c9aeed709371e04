"""TEI's routes beyond embed and rerank, on a live server: ``/similarity``, ``GET /ping``,
``POST /invocations`` (SageMaker's) and our ``top_n`` on ``/rerank``; and a live server whose
reranker is a TEI (the fake, at TEI 1.9.3's batch limit) behind the remote backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from litestar.testing import TestClient

from api.app import create_app
from engine import InferenceEngine, Operation, Settings
from engine.backend import BackendHealth
from tests.conftest import ModelDirs, Server, start_server, stop_server, wait_started
from tests.contract import post_checked, validate_response
from tests.fake_backend import FakeBackend
from tests.fake_tei import FakeTEI, serve
from tests.reference import m3_reference
from tests.texts import DOCUMENTS, QUERY, TEXTS


def tei(client: httpx.Client, path: str, body: dict[str, Any], status: int = 200) -> Any:
    return post_checked(client, "tei", path, body, status)


SIMILARITY = {"inputs": {"source_sentence": QUERY, "sentences": DOCUMENTS}}


def test_similarity_is_the_cosine_of_bge_m3_dense_vectors(
    client: httpx.Client, models: ModelDirs
) -> None:
    response = client.post("/similarity", json=SIMILARITY)
    assert response.status_code == 200, response.text
    answer = response.json()
    validate_response("tei", "POST", "/similarity", 200, answer)
    dense = m3_reference(models.m3, [QUERY, *DOCUMENTS]).dense.astype(np.float64)
    expected = dense[1:] @ dense[0] / (np.linalg.norm(dense[1:], axis=1) * np.linalg.norm(dense[0]))
    np.testing.assert_allclose(answer, expected, atol=1e-5)
    # TEI embeds the source with the sentences: the tokens of all of them.
    usage = client.post("/v1/embeddings", json={"input": [QUERY, *DOCUMENTS]}).json()["usage"]
    assert response.headers["x-compute-tokens"] == str(usage["prompt_tokens"])


def test_similarity_parameters_and_refusals(client: httpx.Client) -> None:
    cut = {**SIMILARITY, "parameters": {"truncate": True, "truncation_direction": "Right"}}
    assert tei(client, "/similarity", cut) == tei(client, "/similarity", SIMILARITY)
    empty = {"inputs": {"source_sentence": QUERY, "sentences": []}}
    refused = tei(client, "/similarity", empty, status=422)
    assert refused["error_type"] == "Validation" and "sentences" in refused["error"]
    prompt = {**SIMILARITY, "parameters": {"prompt_name": "query"}}
    assert "no prompts" in tei(client, "/similarity", prompt, status=422)["error"]


def test_rerank_top_n_keeps_the_best_texts(client: httpx.Client) -> None:
    body = {"query": QUERY, "texts": DOCUMENTS, "return_text": True}
    every = tei(client, "/rerank", body)
    assert len(every) == len(DOCUMENTS)
    assert tei(client, "/rerank", {**body, "top_n": 2}) == every[:2]
    assert tei(client, "/rerank", {**body, "top_n": 100}) == every
    assert client.post("/reranker/rerank", json={**body, "top_n": 1}).json() == every[:1]
    refused = tei(client, "/rerank", {**body, "top_n": 0}, status=422)
    assert refused["error_type"] == "Validation" and "top_n" in refused["error"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/rerank", {"query": QUERY, "texts": DOCUMENTS}),
        ("/predict", {"inputs": [QUERY, DOCUMENTS[0]]}),
    ],
)
def test_reranking_refuses_left_truncation_it_would_not_do(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    """Pairs are cut at their ends: Left, accepted, would score other text than was sent."""
    refused = tei(client, path, {**body, "truncation_direction": "Left"}, status=422)
    assert refused["error_type"] == "Validation"
    assert refused["error"].startswith("`truncation_direction`: Left is not available")
    assert len(tei(client, path, {**body, "truncation_direction": "Right"})) > 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/rerank", {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}),
        ("/similarity", SIMILARITY),
        ("/predict", {"inputs": [[QUERY, DOCUMENTS[0]], [QUERY, DOCUMENTS[1]]]}),
        ("/embed", {"inputs": TEXTS[:3]}),
        ("/embed", {"inputs": "one text"}),
    ],
)
def test_invocations_answers_as_the_route_the_body_speaks(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    expected = client.post(path, json=body)
    response = client.post("/invocations", json=body)
    assert response.status_code == 200, response.text
    validate_response("tei", "POST", path, 200, response.json())
    np.testing.assert_allclose(
        np.array(_numbers(response.json())), np.array(_numbers(expected.json())), atol=1e-6
    )
    assert response.headers["x-compute-tokens"] == expected.headers["x-compute-tokens"]


def _numbers(answer: Any) -> list[float]:
    """Every number of an answer, in order (scores, indices, vector values)."""
    if isinstance(answer, bool | str) or answer is None:
        return []
    if isinstance(answer, int | float):
        return [float(answer)]
    if isinstance(answer, dict):
        return [n for value in answer.values() for n in _numbers(value)]
    return [n for item in answer for n in _numbers(item)]


def test_invocations_refuses_in_teis_shape(client: httpx.Client) -> None:
    response = client.post("/invocations", json={"text": "what is this"})
    assert response.status_code == 422
    assert response.json()["error_type"] == "Validation"
    assert "shapes this route takes" in response.json()["error"]
    wrong = client.post("/invocations", json={"query": QUERY, "texts": "not a list"})
    assert wrong.status_code == 422 and wrong.json()["error_type"] == "Validation"


def test_ping_is_teis_health_check(client: httpx.Client) -> None:
    response = client.get("/ping")
    assert (response.status_code, response.content) == (200, b"")


class _Unhealthy(FakeBackend):
    def health(self) -> BackendHealth:
        return BackendHealth(loaded=self.loaded, healthy=False, device="cpu", detail="sick")


def test_ping_needs_no_key_and_is_503_unless_healthy() -> None:
    config = Settings(api_key=("key-one",))
    engine = InferenceEngine(config, {op: [FakeBackend()] for op in Operation})
    with TestClient(create_app(config, engine)) as app:
        wait_started(app)
        assert (app.get("/ping").status_code, app.get("/ping").content) == (200, b"")
        assert app.post("/similarity", json=SIMILARITY).status_code == 401
    plain = Settings()
    sick = InferenceEngine(plain, {op: [_Unhealthy()] for op in Operation})
    with TestClient(create_app(plain, sick)) as app:
        wait_started(app)
        response = app.get("/ping")
        assert response.status_code == 503
        assert response.json() == {"error": "unhealthy", "error_type": "Unhealthy"}


# -- a TEI reranker behind the remote backend -----------------------------------------------


@pytest.fixture(scope="module")
def tei_reranker() -> Iterator[tuple[FakeTEI, str]]:
    # TEI's default batch limit is 32; 4 makes ten documents three requests.
    fake = FakeTEI(kind="reranker", max_client_batch_size=4)
    with serve(fake) as url:
        yield fake, url


@pytest.fixture(scope="module")
def tei_front(models: ModelDirs, tei_reranker: tuple[FakeTEI, str]) -> Iterator[Server]:
    fake, url = tei_reranker
    # As behind a proxy that drops TEI's x-compute-tokens: the count must fit the limit too.
    fake.strip_headers = True
    front = start_server(models, {"RERANK_BACKENDS": "remote", "REMOTE_RERANK_URL": url})
    yield front
    stop_server(front)


def test_a_tei_reranker_at_a_batch_limit_of_4_reranks_10_documents(
    tei_front: Server, tei_reranker: tuple[FakeTEI, str]
) -> None:
    fake, _ = tei_reranker
    documents = [f"document {n}: cats live in {'warm ' * (n % 3)}houses" for n in range(10)]
    body = {"query": QUERY, "texts": documents, "raw_scores": True}
    response = httpx.post(f"{tei_front.url}/rerank", json={**body, "top_n": 3}, timeout=30)
    assert response.status_code == 200, response.text
    whole = FakeTEI(kind="reranker", max_client_batch_size=len(documents))
    _, headers, content = whole.respond("POST", "/rerank", body, {})
    direct = json.loads(content)
    answer = response.json()
    assert [rank["index"] for rank in answer] == [rank["index"] for rank in direct[:3]]
    np.testing.assert_allclose(
        [rank["score"] for rank in answer], [rank["score"] for rank in direct[:3]], rtol=1e-6
    )
    assert response.headers["x-compute-tokens"] == headers["x-compute-tokens"]
    sent = [r.json for r in fake.requests if r.path in ("/rerank", "/tokenize")]
    assert sent and all(len(b.get("texts", b.get("inputs", []))) <= 4 for b in sent)
    assert fake.contract_violations == []
