"""Bad input gets a clear 4xx in the error envelope, naming the problem; never a 5xx."""

from __future__ import annotations

import asyncio
import gzip
import json

import httpx
import pytest

from tests.conftest import Server
from tests.routes import ENVELOPE_POST_ROUTES

CASES = [
    # path, body, status, param
    ("/v1/embeddings", {"input": []}, 422, "input"),
    ("/v1/embeddings", {"input": ""}, 422, "input"),
    ("/v1/embeddings", {"input": ["ok", "   "]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": 3}, 422, "input"),
    ("/v1/embeddings", {"input": ["ok", None]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": [[101, -1]]}, 422, "input[0][1]"),  # not a token id
    ("/v1/embeddings", {}, 422, None),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int4"}, 422, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "dimensions": 0}, 422, "dimensions"),
    ("/v1/embeddings", {"input": "a", "dimensions": 33}, 422, "dimensions"),
    ("/v1/embeddings", {"input": "a", "model": "text-embedding-3-small"}, 404, "model"),
    ("/v1/embeddings", {"input": ["a"] * 65}, 413, "input"),
    ("/v1/embeddings", {"input": ["a", "b" * 20_001]}, 413, "input[1]"),
    ("/v1/sparse-embeddings", {"input": []}, 422, "input"),
    ("/v1/sparse-embeddings", {"input": ["\n"]}, 422, "input[0]"),
    ("/v1/hybrid-embeddings", {"input": [""]}, 422, "input[0]"),
    ("/v1/hybrid-embeddings", {"input": "a", "return_colbert": "yes"}, 422, "return_colbert"),
    ("/v1/hybrid-embeddings", {"input": "a", "encoding_format": "hex"}, 422, "encoding_format"),
    ("/v1/rerank", {"query": "q", "documents": []}, 422, "documents"),
    ("/v1/rerank", {"query": " ", "documents": ["a"]}, 422, "query"),
    ("/v1/rerank", {"query": "q", "documents": ["a", ""]}, 422, "documents[1]"),
    ("/v1/rerank", {"query": "q", "documents": [{"id": "x"}]}, 422, "documents[0]"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * 65}, 413, "documents"),
    ("/v1/rerank", {"documents": ["a"]}, 422, None),
    # No visible character: each would embed as the same empty text.
    ("/v1/embeddings", {"input": "\u200b"}, 422, "input[0]"),
    ("/v1/embeddings", {"input": ["ok", "\u0000"]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": "\ufeff\u200d "}, 422, "input[0]"),
    ("/v1/rerank", {"query": "\u200b", "documents": ["a"]}, 422, "query"),
]


def assert_envelope(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.mark.parametrize(("path", "body", "status", "param"), CASES)
def test_bad_input_is_a_named_4xx(
    client: httpx.Client, path: str, body: object, status: int, param: str | None
) -> None:
    error = assert_envelope(client.post(path, json=body), status)
    assert error["param"] == param
    if param is not None:
        assert param.split("[")[0] in str(error["message"])


def test_missing_field_is_named(client: httpx.Client) -> None:
    error = assert_envelope(client.post("/v1/embeddings", json={}), 422)
    assert "input" in str(error["message"])


@pytest.mark.parametrize("body", [b'{"input": ', b"not json", b"", b"[1, 2"])
def test_malformed_json_is_400(client: httpx.Client, body: bytes) -> None:
    response = client.post(
        "/v1/embeddings", content=body, headers={"content-type": "application/json"}
    )
    error = assert_envelope(response, 400)
    assert error["code"] == "malformed_json"


def test_a_hundred_thousand_inputs_are_413_not_a_crash(client: httpx.Client) -> None:
    error = assert_envelope(client.post("/v1/embeddings", json={"input": ["a"] * 100_000}), 413)
    assert "MAX_BATCH_SIZE" in str(error["message"])
    assert client.get("/health").status_code == 200


def test_body_over_max_request_bytes_is_413(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"input": ["word " * 1000] * 500})
    error = assert_envelope(response, 413)
    assert "MAX_REQUEST_BYTES" in str(error["message"])


def test_unknown_route_and_method_use_the_envelope(client: httpx.Client) -> None:
    assert_envelope(client.get("/v1/nothing"), 404)
    wrong = client.get("/v1/embeddings")
    assert_envelope(wrong, 405)
    assert "POST" in wrong.headers["allow"]
    assert "POST" in client.put("/embed", json={"inputs": "a"}).headers["allow"]


NOT_UTF8 = [
    b'{"input": ["\xff"]}',
    b'{"input": ["\xc3"]}',
    b'{"input": ["\xc0\xaf"]}',
    b'{"input": ["\xed\xa0\x80"]}',
]
DEEP = b'{"input": ' + b"[" * 1000 + b"]" * 1000 + b"}"


@pytest.mark.parametrize("path", ENVELOPE_POST_ROUTES)
@pytest.mark.parametrize("body", [*NOT_UTF8, DEEP])
def test_undecodable_bodies_are_400_on_every_route(
    client: httpx.Client, path: str, body: bytes
) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    error = assert_envelope(response, 400)
    assert error["code"] == "malformed_json"


@pytest.mark.parametrize("body", [NOT_UTF8[0], DEEP])
def test_undecodable_bodies_are_teis_400_on_teis_routes(client: httpx.Client, body: bytes) -> None:
    for path in ("/embed", "/embed_sparse", "/tokenize"):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error_type"] == "Validation"


def test_text_over_the_token_limit_is_truncated(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"input": "cat " * 4000})
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 512


def test_clients_that_leave_early_cost_no_error_log(server: Server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps({"input": ["word " * 400]}).encode()
    head = (
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def leave() -> None:
        writers = []
        for _ in range(30):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            await writer.drain()
            writers.append(writer)
        await asyncio.sleep(0.05)
        for writer in writers:
            writer.transport.abort()  # gone before the answer
        await asyncio.sleep(2)

    asyncio.run(leave())
    assert "unhandled error" not in server.log.read_text()
    metrics = httpx.get(f"{server.url}/metrics").text
    dropped = [
        line
        for line in metrics.splitlines()
        if line.startswith("bge_http_requests_total{") and 'status="499"' in line
    ]
    assert dropped, "the requests whose clients left are counted as 499"
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        ("text/plain", "text/plain"),
        (None, "none"),
        ("application/x-www-form-urlencoded", "x-www-form-urlencoded"),  # curl -d's default
        ("application/json; charset=latin-1", "latin-1"),
    ],
)
def test_a_body_that_is_not_json_utf8_is_415(
    client: httpx.Client, content_type: str | None, named: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"input": ["na\u00efve"]}).encode()
    for path in ENVELOPE_POST_ROUTES:
        response = client.post(path, content=body, headers=headers)
        error = assert_envelope(response, 415)
        assert error["code"] == "unsupported_media_type"
        assert named in str(error["message"]) and "application/json" in str(error["message"])
    tei = client.post("/embed", content=b'{"inputs": "a"}', headers=headers)
    assert tei.status_code == 415
    assert tei.json()["error_type"] == "Validation"


def test_json_with_a_suffix_type_or_utf8_charset_is_accepted(client: httpx.Client) -> None:
    for content_type in ("application/json; charset=UTF-8", "application/vnd.api+json"):
        response = client.post(
            "/v1/embeddings", content=b'{"input": "a"}', headers={"content-type": content_type}
        )
        assert response.status_code == 200, response.text


def test_a_gzip_body_is_inflated(client: httpx.Client) -> None:
    body = {"input": ["gzip on the wire", "a second text"]}
    plain = client.post("/v1/embeddings", json=body)
    for encoding in ("gzip", "x-gzip"):
        zipped = client.post(
            "/v1/embeddings",
            content=gzip.compress(json.dumps(body).encode()),
            headers={"content-type": "application/json", "content-encoding": encoding},
        )
        assert zipped.status_code == 200, zipped.text
        assert zipped.json()["data"] == plain.json()["data"]


def test_a_gzip_bomb_is_413_by_its_inflated_size(client: httpx.Client) -> None:
    # 40 KB on the wire, 40 MB inflated; MAX_REQUEST_BYTES is 2 MB here.
    bomb = gzip.compress(b'{"input": ["' + b"a" * 40_000_000 + b'"]}')
    assert len(bomb) < 100_000
    response = client.post(
        "/v1/embeddings",
        content=bomb,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    error = assert_envelope(response, 413)
    assert "MAX_REQUEST_BYTES" in str(error["message"])


@pytest.mark.parametrize(
    "body",
    [b"not gzip at all", gzip.compress(b'{"input": "cut short"}')[:-12]],
    ids=["not-gzip", "truncated"],
)
def test_a_broken_gzip_body_is_400(client: httpx.Client, body: bytes) -> None:
    response = client.post(
        "/v1/embeddings",
        content=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    error = assert_envelope(response, 400)
    assert "gzip" in str(error["message"])


def test_an_unknown_content_encoding_is_415_naming_the_accepted(client: httpx.Client) -> None:
    response = client.post(
        "/v1/embeddings",
        content=b'{"input": "a"}',
        headers={"content-type": "application/json", "content-encoding": "br"},
    )
    error = assert_envelope(response, 415)
    assert "`br`" in str(error["message"])
    assert response.headers["accept-encoding"] == "gzip, identity"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/rerank", {"query": "q", "documents": ["a", "b"], "top_n": "2"}, "top_n"),
        (
            "/v1/rerank",
            {"query": "q", "documents": ["a"], "return_documents": "true"},
            "return_documents",
        ),
        ("/v1/embeddings", {"input": "a", "dimensions": "8"}, "dimensions"),
        ("/v1/hybrid-embeddings", {"input": "a", "return_colbert": 1}, "return_colbert"),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": "5"}, None),
        ("/embeddings", {"input": "a", "dimensions": "8"}, "dimensions"),
        ("/rerank", {"query": "q", "documents": ["a"], "top_n": "1"}, None),
    ],
)
def test_strings_are_not_coerced_into_numbers_or_booleans(
    client: httpx.Client, path: str, body: dict[str, object], param: str | None
) -> None:
    error = assert_envelope(client.post(path, json=body), 422)
    field = param or next(k for k, v in body.items() if isinstance(v, str) and k != "query")
    assert field in str(error["message"])
    if param is not None:
        assert error["param"] == param


def test_teis_routes_refuse_coercion_in_teis_body(client: httpx.Client) -> None:
    response = client.post("/embed", json={"inputs": "a", "truncate": "true"})
    assert response.status_code == 422
    assert "truncate" in response.json()["error"]
