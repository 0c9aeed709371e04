"""Compatibility proven with the official clients, not by eye."""

from __future__ import annotations

import base64

import cohere
import numpy as np
import openai
import pytest

from tests.conftest import ModelDirs, Server
from tests.reference import M3Reference, m3_reference, rerank_reference
from tests.texts import DOCUMENTS, QUERY, TEXTS


@pytest.fixture(scope="module")
def reference(models: ModelDirs) -> M3Reference:
    return m3_reference(models.m3, TEXTS[:6])


@pytest.fixture
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("encoding_format", ["base64", "float", None])
def test_openai_sdk_embeddings(
    oai: openai.OpenAI, models: ModelDirs, reference: M3Reference, encoding_format: str | None
) -> None:
    # None: the SDK's default, which asks for base64 and decodes it itself; an explicit
    # "base64" hands the caller the string, little-endian float32.
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    result = oai.embeddings.create(model="BAAI/bge-m3", input=TEXTS[:6], **kwargs)  # type: ignore[arg-type]
    rows = [item.embedding for item in result.data]
    if encoding_format == "base64":
        assert all(isinstance(row, str) for row in rows)
        rows = [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows]  # type: ignore[arg-type]
    got = np.array(rows)
    np.testing.assert_allclose(got, reference.dense, atol=2e-5)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0
    assert result.model == "BAAI/bge-m3"


def test_openai_sdk_dimensions(
    oai: openai.OpenAI, models: ModelDirs, reference: M3Reference
) -> None:
    result = oai.embeddings.create(model="bge-m3", input=TEXTS[0], dimensions=16)
    vector = np.array(result.data[0].embedding)
    prefix = reference.dense[0, :16]
    np.testing.assert_allclose(vector, prefix / np.linalg.norm(prefix), atol=2e-5)


def test_openai_sdk_sees_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.embeddings.create(model="bge-m3", input=[])
    assert "input" in str(info.value)
    with pytest.raises(openai.NotFoundError) as not_found:
        oai.embeddings.create(model="text-embedding-3-small", input="hi")
    assert "text-embedding-3-small" in str(not_found.value)


def test_openai_sdk_lists_models(oai: openai.OpenAI) -> None:
    assert {m.id for m in oai.models.list()} == {"BAAI/bge-m3", "BAAI/bge-reranker-v2-m3"}


@pytest.mark.parametrize("client_class", [cohere.Client, cohere.ClientV2])
def test_cohere_sdk_rerank(
    server: Server, models: ModelDirs, client_class: type[cohere.Client] | type[cohere.ClientV2]
) -> None:
    co = client_class(api_key="unused", base_url=server.url)
    result = co.rerank(model="BAAI/bge-reranker-v2-m3", query=QUERY, documents=DOCUMENTS, top_n=4)
    logits = np.array(rerank_reference(models.reranker, QUERY, DOCUMENTS))
    best = np.argsort(-logits, kind="stable")[:4].tolist()
    assert [r.index for r in result.results] == best
    for r in result.results:
        assert r.relevance_score == pytest.approx(1 / (1 + np.exp(-logits[r.index])), abs=1e-5)
