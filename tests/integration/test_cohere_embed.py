"""Cohere's embed routes (``/v1/embed``, ``/v2/embed``) with the real clients against a
live server: ``cohere.Client``, ``cohere.ClientV2`` and langchain-cohere's
``CohereEmbeddings``. Every vector equals the service's own OpenAI answer
(``/v1/embeddings``) for the same texts; bad input gets a 4xx in the error envelope.
"""

from __future__ import annotations

import base64
from typing import Any

import cohere
import httpx
import numpy as np
import pytest
from langchain_cohere import CohereEmbeddings
from numpy.typing import NDArray

from tests.conftest import SERVER_ENV, Server
from tests.texts import LONG_TEXT, TEXTS

SHORT = TEXTS[:4]
MAX_BATCH = int(SERVER_ENV["MAX_BATCH_SIZE"])


def openai_answer(
    client: httpx.Client, texts: list[str], **extra: Any
) -> tuple[NDArray[np.float64], int, str]:
    """The service's ``/v1/embeddings`` vectors, prompt tokens and model name."""
    response = client.post("/v1/embeddings", json={"input": texts, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    rows = np.array([item["embedding"] for item in body["data"]], dtype=np.float64)
    return rows, body["usage"]["prompt_tokens"], body["model"]


@pytest.fixture(scope="module")
def reference(server: Server) -> tuple[NDArray[np.float64], int, str]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        return openai_answer(http, SHORT)


@pytest.fixture
def co(server: Server) -> cohere.Client:
    return cohere.Client(api_key="unused", base_url=server.url)


@pytest.fixture
def co2(server: Server) -> cohere.ClientV2:
    return cohere.ClientV2(api_key="unused", base_url=server.url)


def decoded(rows: list[str]) -> NDArray[np.float64]:
    """Cohere's base64: each vector's float32 bytes, little-endian."""
    return np.array([np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows])


# --- the clients ---------------------------------------------------------------------------


def test_cohere_v1_floats_by_default(
    co: cohere.Client, reference: tuple[NDArray[np.float64], int, str]
) -> None:
    dense, tokens, model = reference
    result = co.embed(texts=SHORT, model=model, input_type="search_document")
    assert result.response_type == "embeddings_floats"
    np.testing.assert_array_equal(np.array(result.embeddings), dense)
    assert result.texts == SHORT
    assert result.meta is not None and result.meta.api_version is not None
    assert result.meta.api_version.version == "1"
    assert result.meta.billed_units is not None
    assert result.meta.billed_units.input_tokens == tokens


def test_cohere_v1_by_type(
    co: cohere.Client, reference: tuple[NDArray[np.float64], int, str]
) -> None:
    dense, tokens, model = reference
    result = co.embed(
        texts=SHORT, model=model, input_type="search_query", embedding_types=["float", "base64"]
    )
    assert result.response_type == "embeddings_by_type"
    np.testing.assert_array_equal(np.array(result.embeddings.float_), dense)
    assert result.embeddings.base64 is not None
    np.testing.assert_array_equal(decoded(result.embeddings.base64), dense)
    assert result.embeddings.int8 is None
    assert result.meta is not None and result.meta.billed_units is not None
    assert result.meta.billed_units.input_tokens == tokens


@pytest.mark.parametrize("types", [["float"], ["float", "base64"]])
def test_cohere_v2(
    co2: cohere.ClientV2, reference: tuple[NDArray[np.float64], int, str], types: list[str]
) -> None:
    dense, tokens, model = reference
    result = co2.embed(
        texts=SHORT,
        model=model,
        input_type="search_document",
        embedding_types=types,  # type: ignore[arg-type]
    )
    assert result.response_type == "embeddings_by_type"
    np.testing.assert_array_equal(np.array(result.embeddings.float_), dense)
    if "base64" in types:
        assert result.embeddings.base64 is not None
        np.testing.assert_array_equal(decoded(result.embeddings.base64), dense)
    else:
        assert result.embeddings.base64 is None
    assert result.texts == SHORT
    assert result.meta is not None and result.meta.api_version is not None
    assert result.meta.api_version.version == "2"
    assert result.meta.billed_units is not None
    assert result.meta.billed_units.input_tokens == tokens


def test_langchain_cohere_defaults(
    server: Server, client: httpx.Client, reference: tuple[NDArray[np.float64], int, str]
) -> None:
    dense, _, model = reference
    embeddings = CohereEmbeddings(base_url=server.url, cohere_api_key="unused", model=model)
    np.testing.assert_array_equal(np.array(embeddings.embed_documents(SHORT)), dense)
    # Alone, not in the batch of four: padding moves the last float32 bit.
    query, _, _ = openai_answer(client, [SHORT[1]])
    np.testing.assert_array_equal(np.array(embeddings.embed_query(SHORT[1])), query[0])


# --- fields --------------------------------------------------------------------------------


def test_v2_inputs_equal_texts(
    client: httpx.Client, reference: tuple[NDArray[np.float64], int, str]
) -> None:
    dense, _, _ = reference
    inputs = [{"content": [{"type": "text", "text": text}]} for text in SHORT]
    response = client.post("/v2/embed", json={"inputs": inputs, "input_type": "clustering"})
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.array(response.json()["embeddings"]["float"]), dense)


def test_v2_output_dimension_is_openai_dimensions(client: httpx.Client) -> None:
    want, _, _ = openai_answer(client, SHORT, dimensions=16)
    response = client.post("/v2/embed", json={"texts": SHORT, "output_dimension": 16})
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.array(response.json()["embeddings"]["float"]), want)


@pytest.mark.parametrize("path", ["/v1/embed", "/v2/embed"])
def test_truncate_end_cuts_a_long_text(client: httpx.Client, path: str) -> None:
    # END is what the service's TRUNCATE (on) does to /v1/embeddings.
    want, tokens, _ = openai_answer(client, [LONG_TEXT])
    response = client.post(path, json={"texts": [LONG_TEXT], "truncate": "END"})
    assert response.status_code == 200, response.text
    body = response.json()
    embeddings = body["embeddings"] if path == "/v1/embed" else body["embeddings"]["float"]
    np.testing.assert_array_equal(np.array(embeddings), want)
    assert body["meta"]["billed_units"]["input_tokens"] == tokens


@pytest.mark.parametrize("path", ["/v1/embed", "/v2/embed"])
def test_truncate_start_keeps_the_end(client: httpx.Client, path: str) -> None:
    tei = client.post("/embed", json={"inputs": [LONG_TEXT], "truncation_direction": "Left"})
    assert tei.status_code == 200, tei.text
    end, _, _ = openai_answer(client, [LONG_TEXT])
    response = client.post(path, json={"texts": [LONG_TEXT], "truncate": "START"})
    assert response.status_code == 200, response.text
    body = response.json()
    embeddings = body["embeddings"] if path == "/v1/embed" else body["embeddings"]["float"]
    np.testing.assert_array_equal(np.array(embeddings), np.array(tei.json()))
    assert not np.allclose(np.array(embeddings), end, atol=1e-3)  # not the start kept


@pytest.mark.parametrize(
    ("truncate", "keep"), [("END", slice(None, 3)), ("START", slice(-3, None))]
)
def test_v2_max_tokens_cuts_each_text(client: httpx.Client, truncate: str, keep: slice) -> None:
    text = TEXTS[1]
    tokens = client.post("/tokenize", json={"inputs": text, "add_special_tokens": False})
    assert tokens.status_code == 200, tokens.text
    row = tokens.json()[0][keep]
    assert len(row) == 3
    cut = text.encode()[row[0]["start"] : row[-1]["stop"]].decode()
    want, _, _ = openai_answer(client, [cut, TEXTS[3]])
    response = client.post(
        "/v2/embed", json={"texts": [text, TEXTS[3]], "max_tokens": 3, "truncate": truncate}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_array_equal(np.array(body["embeddings"]["float"]), want)
    assert body["texts"] == [text, TEXTS[3]]  # echoed as sent


# --- bad input -----------------------------------------------------------------------------


def assert_refused(response: httpx.Response, status: int, param: str | None, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error


@pytest.mark.parametrize("path", ["/v1/embed", "/v2/embed"])
@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"texts": []}, 422, "texts", ["length >= 1"]),
        ({"texts": ["ok", ""]}, 422, "texts[1]", []),
        ({"texts": ["ok", " \u200b "]}, 422, "texts[1]", ["whitespace"]),
        ({}, 422, "texts", ["required"]),
        ({"texts": ["ok"], "embedding_types": ["float16"]}, 422, "embedding_types[0]", []),
        ({"texts": ["ok"], "embedding_types": []}, 422, "embedding_types", []),
        ({"texts": ["ok"], "embedding_types": ["float", "int4"]}, 422, "embedding_types[1]", []),
        ({"texts": ["ok"] * (MAX_BATCH + 1)}, 413, "texts", ["MAX_BATCH_SIZE"]),
        ({"texts": ["ok"], "truncate": "end"}, 422, "truncate", []),
        ({"texts": ["ok"], "input_type": "query"}, 422, "input_type", []),
        ({"texts": ["ok"], "images": ["data:image/png;base64,AA=="]}, 422, "images", ["text"]),
        ({"texts": ["ok"], "model": "embed-english-v3.0"}, 404, "model", ["embed-english-v3.0"]),
        ({"texts": "ok"}, 422, "texts", []),
    ],
)
def test_bad_input_is_refused(
    client: httpx.Client,
    path: str,
    body: dict[str, Any],
    status: int,
    param: str,
    words: list[str],
) -> None:
    assert_refused(client.post(path, json=body), status, param, *words)


@pytest.mark.parametrize("path", ["/v1/embed", "/v2/embed"])
def test_truncate_none_refuses_a_long_text(client: httpx.Client, path: str) -> None:
    response = client.post(path, json={"texts": ["ok", LONG_TEXT], "truncate": "NONE"})
    assert_refused(response, 413, "texts[1]", "tokens", "truncate")


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        (
            {"inputs": [{"content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            422,
            "inputs[0]",
            ["image"],
        ),
        (
            {
                "inputs": [
                    {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
                ]
            },
            422,
            "inputs[0].content",
            ["one text"],
        ),
        (
            {"texts": ["a"], "inputs": [{"content": [{"type": "text", "text": "a"}]}]},
            422,
            "inputs",
            [],
        ),
        ({"inputs": []}, 422, "inputs", []),
        ({"texts": ["ok"], "output_dimension": 100_000}, 422, "output_dimension", []),
        ({"texts": ["ok"], "max_tokens": 0}, 422, "max_tokens", []),
        ({"texts": [TEXTS[1]], "max_tokens": 2, "truncate": "NONE"}, 413, "texts[0]", ["2"]),
    ],
)
def test_v2_bad_input_is_refused(
    client: httpx.Client, body: dict[str, Any], status: int, param: str, words: list[str]
) -> None:
    assert_refused(client.post("/v2/embed", json=body), status, param, *words)
