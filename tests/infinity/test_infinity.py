"""The in-process infinity backend equals sentence-transformers (and FlagEmbedding's dense)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from backends.infinity import InfinityBackend
from engine import Operation, Output, Settings
from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.reference import m3_reference, rerank_reference
from tests.texts import QUERY, TEXTS

# infinity_emb pins numpy<2: these run in .venv-infinity (make test).
pytestmark = pytest.mark.infinity

# infinity's cross-encoder truncates pairs its own way; compare on documents that fit.
SHORT_DOCUMENTS = ["the cat sat on the mat in paris", "berlin music history", "a dog", "paris"]


@pytest.fixture(scope="module")
def infinity(models: ModelDirs, loop: asyncio.AbstractEventLoop) -> Iterator[InfinityBackend]:
    settings = Settings(
        dtype="float32",
        embedding_model_name=str(models.m3),
        reranker_model_name=str(models.reranker),
        device="cpu",
    )
    backend = InfinityBackend(settings, frozenset({Operation.EMBED, Operation.RERANK}))
    loop.run_until_complete(backend.start())
    yield backend
    loop.run_until_complete(backend.stop())


def sentence_transformers_dense(models: ModelDirs) -> np.ndarray:
    model = SentenceTransformer(str(models.m3), device="cpu")
    return np.asarray(model.encode(TEXTS, normalize_embeddings=True), dtype=np.float32)


def cross_encoder_logits(models: ModelDirs) -> np.ndarray:
    model = CrossEncoder(
        str(models.reranker), device="cpu", default_activation_function=torch.nn.Identity()
    )
    return np.asarray(model.predict([(QUERY, d) for d in SHORT_DOCUMENTS]), dtype=np.float32)


def test_dense_equals_sentence_transformers_and_flagembedding(
    infinity: InfinityBackend, models: ModelDirs, loop: asyncio.AbstractEventLoop
) -> None:
    encoding = loop.run_until_complete(infinity.encode(TEXTS, frozenset({Output.DENSE})))
    assert encoding.dense is not None
    np.testing.assert_allclose(encoding.dense, sentence_transformers_dense(models), atol=2e-5)
    np.testing.assert_allclose(encoding.dense, m3_reference(models.m3, TEXTS).dense, atol=2e-5)
    assert encoding.token_count > len(TEXTS)
    assert infinity.model_info(Operation.EMBED).dimension == 32


def test_rerank_equals_sentence_transformers_and_flagreranker(
    infinity: InfinityBackend, models: ModelDirs, loop: asyncio.AbstractEventLoop
) -> None:
    scores = loop.run_until_complete(infinity.score(QUERY, SHORT_DOCUMENTS))
    np.testing.assert_allclose(scores.logits, cross_encoder_logits(models), atol=1e-4)
    np.testing.assert_allclose(
        scores.logits, rerank_reference(models.reranker, QUERY, SHORT_DOCUMENTS), atol=1e-4
    )


def test_infinity_refuses_heads_it_cannot_compute(
    infinity: InfinityBackend, loop: asyncio.AbstractEventLoop
) -> None:
    assert infinity.capabilities.operations == {Operation.EMBED, Operation.RERANK}
    from engine.errors import Unavailable

    with pytest.raises(Unavailable):
        loop.run_until_complete(infinity.encode(["x"], frozenset(Output)))


@pytest.fixture(scope="module")
def mixed_server(models: ModelDirs) -> Iterator[Server]:
    live = start_server(
        models,
        {
            "EMBED_BACKENDS": "infinity,flag",
            "LEXICAL_COLBERT_BACKENDS": "flag",
            "RERANK_BACKENDS": "infinity",
        },
    )
    yield live
    stop_server(live)


def test_chains_route_each_operation(mixed_server: Server, models: ModelDirs) -> None:
    health = httpx.get(f"{mixed_server.url}/health").json()
    assert health["status"] == "ok"
    assert health["routes"] == {
        "embed": "infinity",
        "lexical_colbert": "flag",
        "rerank": "infinity",
    }
    assert health["chains"] == {
        "embed": ["infinity", "flag"],
        "lexical_colbert": ["flag"],
        "rerank": ["infinity"],
    }
    # flag serves sparse only here: it loaded no reranker.
    assert "rerank.forward_passes" not in health["backends"]["flag"]["stats"]

    before = health["backends"]["flag"]["stats"]["embed.forward_passes"]
    dense = httpx.post(f"{mixed_server.url}/v1/embeddings", json={"input": TEXTS}, timeout=60)
    assert dense.status_code == 200
    got = np.array([d["embedding"] for d in dense.json()["data"]])
    np.testing.assert_allclose(got, sentence_transformers_dense(models), atol=2e-5)
    after = httpx.get(f"{mixed_server.url}/health").json()["backends"]["flag"]["stats"]
    assert after["embed.forward_passes"] == before  # dense went to infinity, not flag

    sparse = httpx.post(f"{mixed_server.url}/v1/sparse-embeddings", json={"input": TEXTS[:3]})
    assert sparse.status_code == 200

    rerank = httpx.post(
        f"{mixed_server.url}/v1/rerank",
        json={"query": QUERY, "documents": SHORT_DOCUMENTS, "raw_scores": True},
    ).json()
    by_index = {r["index"]: r["relevance_score"] for r in rerank["results"]}
    expected = cross_encoder_logits(models)
    np.testing.assert_allclose(
        [by_index[i] for i in range(len(SHORT_DOCUMENTS))], expected, atol=1e-4
    )


def test_tokenize_is_the_models_tokenizer_untruncated(
    infinity: InfinityBackend, models: ModelDirs, loop: asyncio.AbstractEventLoop
) -> None:
    from transformers import AutoTokenizer

    from tests.texts import LONG_TEXT

    rows = loop.run_until_complete(infinity.token_ids(["hello world", LONG_TEXT]))
    expected = AutoTokenizer.from_pretrained(models.m3)(["hello world", LONG_TEXT])["input_ids"]
    assert [list(r) for r in rows] == [list(e) for e in expected]
    assert len(rows[1]) > infinity.model_info(Operation.EMBED).max_tokens
