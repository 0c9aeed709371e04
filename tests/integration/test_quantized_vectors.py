"""Quantized dense vectors per request, on a live server: OpenAI's ``encoding_format``
(and Infinity's, which shares its request), the hybrid route's (dense and ColBERT rows),
and Cohere's ``embedding_types`` through the official ``cohere`` SDK.

Every quantized answer is checked against the float answer of the same request (same
texts, same batch), recomputed here: float16 with numpy, binary and ubinary with
sentence-transformers' ``quantize_embeddings``, int8 and uint8 with the formula
docs/api.md states (``scale = max|x| / 127``, ``q = round(x / scale)``, uint8 = q + 128).
"""

from __future__ import annotations

import base64
from typing import Any

import cohere
import httpx
import numpy as np
import openai
import pytest
from numpy.typing import NDArray
from sentence_transformers.util.quantization import quantize_embeddings

from tests.conftest import Server
from tests.contract import validate_response
from tests.texts import TEXTS

SHORT = TEXTS[:4]


def int8_reference(floats: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    scales = np.abs(floats).max(axis=1) / 127
    return np.rint(floats / scales[:, None]).astype(np.int64), scales


def expected(floats: NDArray[np.float64], encoding: str) -> NDArray[Any]:
    """What ``encoding`` must answer for these float vectors, as decoded numbers."""
    if encoding == "float16":
        return floats.astype(np.float32).astype(np.float16)
    if encoding == "int8":
        return int8_reference(floats)[0]
    if encoding == "uint8":
        return int8_reference(floats)[0] + 128
    packed = quantize_embeddings(floats.astype(np.float32), encoding)  # type: ignore[arg-type]
    return np.asarray(packed).astype(np.int64)


def decoded(rows: list[Any], encoding: str) -> NDArray[Any]:
    if encoding == "float16":
        return np.array([np.frombuffer(base64.b64decode(row), "<f2") for row in rows])
    assert all(isinstance(value, int) for row in rows for value in row), "integers expected"
    return np.array(rows, dtype=np.int64)


def openai_rows(
    client: httpx.Client, path: str, texts: list[str], encoding: str
) -> list[dict[str, Any]]:
    response = client.post(path, json={"input": texts, "encoding_format": encoding})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def floats_of(client: httpx.Client, texts: list[str]) -> NDArray[np.float64]:
    rows = openai_rows(client, "/v1/embeddings", texts, "float")
    return np.array([row["embedding"] for row in rows], dtype=np.float64)


QUANTIZED = ["float16", "int8", "uint8", "binary", "ubinary"]


# --- OpenAI's /v1/embeddings and Infinity's /embeddings --------------------------------------


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings"])
@pytest.mark.parametrize("encoding", QUANTIZED)
def test_encoding_format_answers_the_reference(
    client: httpx.Client, path: str, encoding: str
) -> None:
    floats = floats_of(client, SHORT)
    rows = openai_rows(client, path, SHORT, encoding)
    got = decoded([row["embedding"] for row in rows], encoding)
    np.testing.assert_array_equal(got, expected(floats, encoding))
    if encoding in ("int8", "uint8"):
        np.testing.assert_array_equal([row["scale"] for row in rows], int8_reference(floats)[1])
        # The documented way back: q * scale (uint8: q - 128 first) is x within half a step.
        ints = got - (128 if encoding == "uint8" else 0)
        scales = np.array([row["scale"] for row in rows])[:, None]
        assert (np.abs(ints * scales - floats) <= scales / 2 + 1e-12).all()
    else:
        assert all("scale" not in row for row in rows)


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_openai_formats_carry_no_scale(client: httpx.Client, encoding: str) -> None:
    rows = openai_rows(client, "/v1/embeddings", SHORT, encoding)
    assert all(set(row) == {"object", "index", "embedding"} for row in rows)


def test_infinity_answer_still_fits_its_contract(client: httpx.Client) -> None:
    response = client.post("/embeddings", json={"input": SHORT, "encoding_format": "int8"})
    assert response.status_code == 200, response.text
    validate_response("infinity", "POST", "/embeddings", 200, response.json())


@pytest.mark.parametrize(
    ("encoding", "size"),
    [("base64", 4), ("float16", 2), ("int8", 1), ("uint8", 1), ("binary", 1 / 8)],
)
def test_bytes_per_vector(client: httpx.Client, encoding: str, size: float) -> None:
    dim = floats_of(client, SHORT[:1]).shape[1]
    (row,) = openai_rows(client, "/v1/embeddings", SHORT[:1], encoding)
    vector = row["embedding"]
    stored = len(base64.b64decode(vector)) if isinstance(vector, str) else len(vector)
    assert stored == int(np.ceil(dim * size))


def test_openai_sdk_reads_an_int8_answer(server: Server, client: httpx.Client) -> None:
    floats = floats_of(client, SHORT)
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    answer = oai.embeddings.create(
        model="BAAI/bge-m3",
        input=SHORT,
        encoding_format="int8",  # type: ignore[arg-type]
    )
    got = np.array([item.embedding for item in answer.data])
    np.testing.assert_array_equal(got, expected(floats, "int8"))


def test_dimensions_cut_before_quantizing(client: httpx.Client) -> None:
    body = {"input": SHORT, "dimensions": 12}
    floats = client.post("/v1/embeddings", json=body).json()["data"]
    cut = np.array([row["embedding"] for row in floats], dtype=np.float64)
    packed = client.post("/v1/embeddings", json={**body, "encoding_format": "ubinary"}).json()
    got = np.array([row["embedding"] for row in packed["data"]])
    assert got.shape == (len(SHORT), 2)  # 12 bits in 2 bytes, the last padded with zeros
    np.testing.assert_array_equal(got, expected(cut, "ubinary"))


# --- the hybrid route --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", QUANTIZED)
def test_hybrid_dense_is_quantized(client: httpx.Client, encoding: str) -> None:
    def hybrid(encoding: str) -> list[dict[str, Any]]:
        response = client.post(
            "/v1/hybrid-embeddings", json={"input": SHORT, "encoding_format": encoding}
        )
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    plain = hybrid("float")
    floats = np.array([row["dense"] for row in plain], dtype=np.float64)
    rows = hybrid(encoding)
    np.testing.assert_array_equal(
        decoded([row["dense"] for row in rows], encoding), expected(floats, encoding)
    )
    assert [row["sparse"] for row in rows] == [row["sparse"] for row in plain]
    if encoding in ("int8", "uint8"):
        want = int8_reference(floats)[1]
        np.testing.assert_array_equal([row["dense_scale"] for row in rows], want)
    else:
        assert all("dense_scale" not in row for row in rows)


def colbert_answer(client: httpx.Client, encoding: str) -> list[dict[str, Any]]:
    response = client.post(
        "/v1/hybrid-embeddings",
        json={"input": SHORT[:3], "return_colbert": True, "encoding_format": encoding},
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


BYTES_PER_DIMENSION = {
    "base64": 4,
    "float16": 2,
    "int8": 1,
    "uint8": 1,
    "binary": 1 / 8,
    "ubinary": 1 / 8,
}


@pytest.mark.parametrize("encoding", QUANTIZED)
def test_hybrid_colbert_rows_are_quantized(client: httpx.Client, encoding: str) -> None:
    """Each ColBERT row is quantized as a dense vector is, its own scale per row."""
    plain = colbert_answer(client, "float")
    rows = colbert_answer(client, encoding)
    assert len(rows) == len(plain)
    for want, got in zip(plain, rows, strict=True):
        floats = np.array(want["colbert"], dtype=np.float64)
        assert len(got["colbert"]) == len(floats)  # one row per token, as float answers
        np.testing.assert_array_equal(decoded(got["colbert"], encoding), expected(floats, encoding))
        width = int(np.ceil(floats.shape[1] * BYTES_PER_DIMENSION[encoding]))
        for row in got["colbert"]:
            stored = len(base64.b64decode(row)) if isinstance(row, str) else len(row)
            assert stored == width
        dense = np.array([want["dense"]], dtype=np.float64)
        np.testing.assert_array_equal(decoded([got["dense"]], encoding), expected(dense, encoding))
        assert got["sparse"] == want["sparse"]
        if encoding in ("int8", "uint8"):
            scales = int8_reference(floats)[1]
            assert len(got["colbert_scales"]) == len(floats)
            np.testing.assert_array_equal(got["colbert_scales"], scales)
            assert got["dense_scale"] == int8_reference(dense)[1][0]
            # The documented way back: q * scale (uint8: q - 128 first), within half a step.
            ints = decoded(got["colbert"], encoding) - (128 if encoding == "uint8" else 0)
            per_row = np.array(got["colbert_scales"])[:, None]
            assert (np.abs(ints * per_row - floats) <= per_row / 2 + 1e-12).all()
        else:
            assert "colbert_scales" not in got and "dense_scale" not in got


def test_hybrid_colbert_float_and_base64_are_unchanged(client: httpx.Client) -> None:
    """The float answer has the fields it had; base64 rows are the float rows' float32 bytes."""
    plain = colbert_answer(client, "float")
    packed = colbert_answer(client, "base64")
    for want, got in zip(plain, packed, strict=True):
        assert set(want) == {"index", "dense", "sparse", "colbert"}
        assert set(got) == {"index", "dense", "sparse", "colbert"}
        for number_row, base64_row in zip(want["colbert"], got["colbert"], strict=True):
            bytes_of_floats = np.array(number_row, dtype="<f4").tobytes()
            assert base64.b64decode(base64_row) == bytes_of_floats
        assert base64.b64decode(got["dense"]) == np.array(want["dense"], dtype="<f4").tobytes()


def test_hybrid_without_colbert_has_no_colbert_scales(client: httpx.Client) -> None:
    response = client.post(
        "/v1/hybrid-embeddings", json={"input": SHORT[:2], "encoding_format": "int8"}
    )
    assert response.status_code == 200, response.text
    assert all("colbert_scales" not in row for row in response.json()["data"])


# --- Cohere, through the official SDK ------------------------------------------------------------

COHERE_TYPES = ["int8", "uint8", "binary", "ubinary"]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("kinds", [[kind] for kind in COHERE_TYPES] + [["float", *COHERE_TYPES]])
def test_cohere_sdk_parses_every_type(
    server: Server, client: httpx.Client, version: str, kinds: list[str]
) -> None:
    floats = floats_of(client, SHORT)
    sdk: cohere.Client | cohere.ClientV2
    if version == "v1":
        sdk = cohere.Client(api_key="unused", base_url=server.url)
    else:
        sdk = cohere.ClientV2(api_key="unused", base_url=server.url)
    result = sdk.embed(
        texts=SHORT,
        model="bge-m3",
        input_type="search_document",
        embedding_types=kinds,  # type: ignore[arg-type]
    )
    assert result.response_type == "embeddings_by_type"
    by_type = result.embeddings
    for kind in COHERE_TYPES:
        rows = getattr(by_type, kind)
        if kind not in kinds:
            assert rows is None
            continue
        np.testing.assert_array_equal(decoded(rows, kind), expected(floats, kind))
    if "float" in kinds:
        np.testing.assert_array_equal(np.array(by_type.float_), floats)
    assert by_type.base64 is None


def test_cohere_shape_holds_only_what_was_asked(client: httpx.Client) -> None:
    response = client.post(
        "/v2/embed", json={"texts": SHORT, "embedding_types": ["ubinary", "int8", "int8"]}
    )
    assert response.status_code == 200, response.text
    embeddings = response.json()["embeddings"]
    assert set(embeddings) == {"int8", "ubinary"}
    assert all(len(row) == len(embeddings["int8"][0]) // 8 for row in embeddings["ubinary"])


# --- what is still refused -----------------------------------------------------------------------


def assert_refused(response: httpx.Response, param: str, *words: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings", "/v1/hybrid-embeddings"])
@pytest.mark.parametrize("encoding", ["int4", "INT8", "bfloat16"])
def test_unknown_encoding_format_is_422(client: httpx.Client, path: str, encoding: str) -> None:
    response = client.post(path, json={"input": ["ok"], "encoding_format": encoding})
    assert_refused(response, "encoding_format", encoding)


@pytest.mark.parametrize("path", ["/v1/embed", "/v2/embed"])
@pytest.mark.parametrize("kind", ["float16", "int4"])  # float16 is ours, not Cohere's
def test_unknown_embedding_type_is_422(client: httpx.Client, path: str, kind: str) -> None:
    response = client.post(path, json={"texts": ["ok"], "embedding_types": ["float", kind]})
    assert_refused(response, "embedding_types[1]", kind)


def test_cohere_sdk_sees_a_refusal(server: Server) -> None:
    sdk = cohere.ClientV2(api_key="unused", base_url=server.url)
    with pytest.raises(cohere.UnprocessableEntityError) as info:
        sdk.embed(
            texts=SHORT,
            model="bge-m3",
            input_type="search_query",
            embedding_types=["float16"],  # type: ignore[list-item]
        )
    assert "float16" in str(info.value.body)
