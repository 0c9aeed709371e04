"""Bad input gets a clear 4xx in the error envelope, naming the problem; never a 5xx."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.conftest import Server

CASES = [
    # path, body, status, param
    ("/v1/embeddings", {"input": []}, 422, "input"),
    ("/v1/embeddings", {"input": ""}, 422, "input[0]"),
    ("/v1/embeddings", {"input": ["ok", "   "]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": 3}, 422, "input"),
    ("/v1/embeddings", {"input": ["ok", None]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": [[101, 102]]}, 422, "input[0]"),
    ("/v1/embeddings", {}, 422, None),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "dimensions": 0}, 422, "dimensions"),
    ("/v1/embeddings", {"input": "a", "dimensions": 33}, 422, "dimensions"),
    ("/v1/embeddings", {"input": "a", "model": "text-embedding-3-small"}, 404, "model"),
    ("/v1/embeddings", {"input": ["a"] * 65}, 413, "input"),
    ("/v1/embeddings", {"input": ["a", "b" * 20_001]}, 413, "input[1]"),
    ("/v1/sparse-embeddings", {"input": []}, 422, "input"),
    ("/v1/sparse-embeddings", {"input": ["\n"]}, 422, "input[0]"),
    ("/v1/hybrid-embeddings", {"input": [""]}, 422, "input[0]"),
    ("/v1/hybrid-embeddings", {"input": "a", "return_colbert": "yes"}, 422, "return_colbert"),
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


POST_ROUTES = [
    "/v1/embeddings",
    "/v1/sparse-embeddings",
    "/v1/hybrid-embeddings",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/embeddings",
    "/rerank/batch",
]
NOT_UTF8 = [
    b'{"input": ["\xff"]}',
    b'{"input": ["\xc3"]}',
    b'{"input": ["\xc0\xaf"]}',
    b'{"input": ["\xed\xa0\x80"]}',
]
DEEP = b'{"input": ' + b"[" * 1000 + b"]" * 1000 + b"}"


@pytest.mark.parametrize("path", POST_ROUTES)
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
