"""Token-id arrays against the live service: LangChain's ``OpenAIEmbeddings`` at its
defaults and the openai SDK, each vector equal to what the text route answers.

LangChain encodes each text with tiktoken's ``cl100k_base`` (its fallback for a model name
tiktoken does not know), cuts the ids into chunks of ``embedding_ctx_length``, and embeds a
text of several chunks as the token-weighted average of their vectors, re-normalised. So a
text's expected vector is computed from the service's text answers for the decoded chunks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tiktoken
from langchain_openai import OpenAIEmbeddings
from numpy.typing import NDArray

from tests.conftest import Server
from tests.offline_tiktoken import offline_tiktoken
from tests.texts import TEXTS

EMBEDDER = "BAAI/bge-m3"
EMBED_TEXTS = TEXTS[:6]  # one is longer than the tiny model's 512 tokens
_WORDS = ["Paris", "café", "BM25", "Köln", "Zürich", "naïve"]
# More than LangChain's 8191 ids of cl100k_base in fewer than the test server's 20000
# characters, and its first chunk ends inside a character's bytes.
LONGER_THAN_A_CHUNK = " ".join(
    f"{_WORDS[i % 6]} {'🦜🦩🦚🦉'[i % 4]}{'鱷鯨鴕鸚鵡'[i % 5]}" for i in range(1100)
)
DEFAULT_CTX = 8191  # OpenAIEmbeddings.embedding_ctx_length

Vectors = NDArray[np.float64]


@pytest.fixture
def cl100k(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tiktoken.Encoding:
    """tiktoken's cl100k_base as LangChain loads it, from the bundled file (no network)."""
    offline_tiktoken(monkeypatch, tmp_path / "tiktoken")
    return tiktoken.get_encoding("cl100k_base")


def text_route(client: httpx.Client, texts: Sequence[str]) -> Vectors:
    answer = client.post("/v1/embeddings", json={"model": EMBEDDER, "input": list(texts)})
    assert answer.status_code == 200, answer.text
    return np.array([row["embedding"] for row in answer.json()["data"]])


def chunks_of(encoding: tiktoken.Encoding, text: str, ctx: int) -> list[list[int]]:
    ids = encoding.encode_ordinary(text)
    return [ids[start : start + ctx] for start in range(0, len(ids), ctx)]


def expected(
    client: httpx.Client, encoding: tiktoken.Encoding, texts: Sequence[str], ctx: int
) -> Vectors:
    """Each text's vector as LangChain makes it from the text route's chunk vectors."""
    rows = []
    for text in texts:
        chunks = chunks_of(encoding, text, ctx)
        vectors = text_route(client, [encoding.decode(chunk) for chunk in chunks])
        average = np.average(vectors, axis=0, weights=[len(chunk) for chunk in chunks])
        rows.append(vectors[0] if len(chunks) == 1 else average / np.linalg.norm(average))
    return np.array(rows)


def langchain(server: Server, **options: Any) -> OpenAIEmbeddings:
    return OpenAIEmbeddings(
        model=EMBEDDER,
        base_url=f"{server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        **options,
    )


def test_langchain_at_its_defaults_embeds_token_arrays_as_their_text(
    server: Server, client: httpx.Client, cl100k: tiktoken.Encoding
) -> None:
    texts = [*EMBED_TEXTS, LONGER_THAN_A_CHUNK]
    chunks = chunks_of(cl100k, LONGER_THAN_A_CHUNK, DEFAULT_CTX)
    assert len(chunks) == 2 and cl100k.decode(chunks[0]).endswith("\ufffd")

    documents = np.array(langchain(server).embed_documents(texts))

    want = expected(client, cl100k, texts, DEFAULT_CTX)
    np.testing.assert_allclose(documents, want, rtol=0, atol=1e-6)
    # The short texts are one chunk each: the text route's vectors themselves.
    np.testing.assert_allclose(documents[:-1], text_route(client, EMBED_TEXTS), rtol=0, atol=1e-7)
    # The long one is the chunks' average, not the vector of the whole text.
    whole = text_route(client, [LONGER_THAN_A_CHUNK])[0]
    assert np.linalg.norm(documents[-1] - whole) > 1e-3
    query = langchain(server).embed_query(EMBED_TEXTS[2])
    np.testing.assert_allclose(query, text_route(client, [EMBED_TEXTS[2]])[0], rtol=0, atol=1e-7)


def test_langchain_small_chunks_average_as_langchain_does(
    server: Server, client: httpx.Client, cl100k: tiktoken.Encoding
) -> None:
    ctx = 50
    sent: list[Any] = []

    def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content)["input"])

    with httpx.Client(event_hooks={"request": [record]}) as http:
        embeddings = langchain(server, embedding_ctx_length=ctx, chunk_size=8, http_client=http)
        documents = np.array(embeddings.embed_documents(EMBED_TEXTS))

    # What went over the wire: lists of at most ctx token ids, 8 lists a request at most.
    assert len(sent) > 1
    assert all(len(batch) <= 8 for batch in sent)
    assert all(
        len(ids) <= ctx and all(isinstance(i, int) for i in ids) for batch in sent for ids in batch
    )
    assert sum(len(batch) for batch in sent) == sum(
        len(chunks_of(cl100k, text, ctx)) for text in EMBED_TEXTS
    )
    want = expected(client, cl100k, EMBED_TEXTS, ctx)
    np.testing.assert_allclose(documents, want, rtol=0, atol=1e-6)
    asynchronous = asyncio.run(
        langchain(server, embedding_ctx_length=ctx).aembed_documents(EMBED_TEXTS)
    )
    np.testing.assert_allclose(np.array(asynchronous), want, rtol=0, atol=1e-6)


@pytest.fixture
def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


# The SDK asks for base64 and decodes it unless the caller names a format.
@pytest.mark.parametrize("options", [{}, {"encoding_format": "float"}])
def test_openai_sdk_token_arrays_embed_as_their_text(
    sdk: openai.OpenAI, client: httpx.Client, cl100k: tiktoken.Encoding, options: dict[str, Any]
) -> None:
    arrays = [cl100k.encode_ordinary(text) for text in EMBED_TEXTS]
    answer = sdk.embeddings.create(model=EMBEDDER, input=arrays, **options)
    by_text = client.post("/v1/embeddings", json={"input": EMBED_TEXTS}).json()
    np.testing.assert_allclose(
        [row.embedding for row in answer.data], text_route(client, EMBED_TEXTS), rtol=0, atol=1e-7
    )
    assert answer.usage.prompt_tokens == by_text["usage"]["prompt_tokens"]  # bge-m3's tokens
    one = sdk.embeddings.create(model=EMBEDDER, input=arrays[2], **options)
    assert len(one.data) == 1
    np.testing.assert_allclose(
        one.data[0].embedding, text_route(client, [EMBED_TEXTS[2]])[0], rtol=0, atol=1e-7
    )


def test_openai_sdk_bad_token_id_is_a_named_422(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        sdk.embeddings.create(model=EMBEDDER, input=[[9906, 1917], [9906, 100_300]])
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == "input[1][1]"
    assert "not a token id of cl100k_base" in error["message"]
