"""The remote backend's wiring: URLs per operation, Infinity's contract, error bodies."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from backends import build_chains
from backends.remote import RemoteBackend
from backends.remote.transport import public_url, remote_message
from engine import Operation, Output, Settings
from engine.errors import StartupError
from tests import contract

INFINITY = "http://infinity:7997"


def test_a_chain_naming_remote_needs_a_url() -> None:
    with pytest.raises(
        StartupError,
        match="RERANK_BACKENDS names the remote backend, but "
        "neither REMOTE_RERANK_URL nor REMOTE_URL is set",
    ):
        build_chains(Settings(rerank_backends=("remote",), remote_embed_url="http://tei"))


def test_operations_sharing_a_url_share_one_endpoint() -> None:
    backend = RemoteBackend(
        Settings(remote_url="http://one", remote_rerank_url="http://two"),
        frozenset({Operation.EMBED, Operation.LEXICAL_COLBERT, Operation.RERANK}),
    )
    assert [(e.url, sorted(e.operations)) for e in backend.endpoints] == [
        ("http://one", [Operation.EMBED, Operation.LEXICAL_COLBERT]),
        ("http://two", [Operation.RERANK]),
    ]


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(
        StartupError, match=re.escape("REMOTE_URL=ftp://host... is not an http(s) URL")
    ):
        RemoteBackend(Settings(remote_url="ftp://user:pw@host"), frozenset({Operation.EMBED}))


def test_public_url_drops_credentials() -> None:
    assert public_url("https://alice:hunter2@tei.example:8443/base/") == (
        "https://tei.example:8443/base"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"error": "Input validation error", "error_type": "Validation"}',
            "Input validation error",
        ),
        (b'{"error": {"message": "model not found", "type": "x"}}', "model not found"),
        (
            b'{"detail": [{"loc": ["body", "input"], "msg": "too many", "type": "x"}]}',
            "body.input: too many",
        ),
        (b'{"detail": "Not authenticated"}', "Not authenticated"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"", "(empty body)"),
    ],
)
def test_remote_error_bodies_of_every_kind_give_their_message(body: bytes, message: str) -> None:
    assert remote_message(body) == message


def as_format(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def infinity_transport(
    models: list[dict[str, Any]], sent: list[tuple[str, Any]], refuse_base64: bool = False
) -> Callable[[httpx.Request], httpx.Response]:
    """Infinity 0.0.77 as its contract describes it; records what the proxy sends."""

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/models":
            body: Any = {"object": "list", "data": models}
            contract.validate_response("infinity", "get", "/models", 200, body)
            return httpx.Response(200, json=body)
        payload = json.loads(request.content)
        sent.append((path, payload))
        usage = {"prompt_tokens": 7, "total_tokens": 7}
        if path == "/embeddings":
            contract.validate("infinity", "MultiModalOpenAIEmbedding", payload)
            if payload["encoding_format"] == "base64" and refuse_base64:
                # What Infinity answers for a model with bit-packed embeddings.
                return httpx.Response(
                    400, json={"detail": "model does not support base64 encoding"}
                )
            data = [
                {
                    "object": "embedding",
                    "embedding": as_format(
                        [3.0, 4.0] if i % 2 else [0.6, 0.8], payload["encoding_format"]
                    ),
                    "index": i,
                }
                for i in range(len(payload["input"]))
            ]
            body = {"object": "list", "data": data[::-1], "model": payload["model"], "usage": usage}
        else:
            contract.validate("infinity", "RerankInput", payload)
            results = [
                {"relevance_score": float(i) - 1.5, "index": i}
                for i in range(len(payload["documents"]))
            ]
            body = {
                "object": "rerank",
                "results": results[::-1],
                "model": payload["model"],
                "usage": usage,
            }
        contract.validate_response("infinity", "post", path, 200, body)
        return httpx.Response(200, json=body)

    return answer


MODELS = [
    {"id": "bge-m3", "stats": {}, "object": "model", "capabilities": ["embed"]},
    {"id": "bge-reranker-v2-m3", "stats": {}, "object": "model", "capabilities": ["rerank"]},
]


def infinity_backend(
    models: list[dict[str, Any]],
    sent: list[tuple[str, Any]],
    refuse_base64: bool = False,
    **kw: Any,
) -> RemoteBackend:
    settings = Settings(remote_url=INFINITY, remote_kind="infinity", **kw)
    handler = infinity_transport(models, sent, refuse_base64)
    return RemoteBackend(
        settings,
        frozenset({Operation.EMBED, Operation.RERANK}),
        transport=lambda: httpx.MockTransport(handler),
    )


@pytest.mark.parametrize("refuse_base64", [False, True])
def test_infinity_requests_follow_its_contract_and_answers_are_put_in_order(
    refuse_base64: bool,
) -> None:
    sent: list[tuple[str, Any]] = []
    backend = infinity_backend(MODELS, sent, refuse_base64)

    async def work() -> tuple[Any, Any]:
        await backend.start()
        try:
            encoding = await backend.encode(["a", "b", "c"], frozenset({Output.DENSE}))
            scores = await backend.score("q", ["x", "y", "z"])
            return encoding, scores
        finally:
            await backend.stop()

    encoding, scores = asyncio.run(work())
    np.testing.assert_allclose(encoding.dense, [[0.6, 0.8], [0.6, 0.8], [0.6, 0.8]], rtol=1e-6)
    assert encoding.token_count == 7
    np.testing.assert_allclose(scores.logits, [-1.5, -0.5, 0.5])  # raw, by input index
    embeds = [body for path, body in sent if path == "/embeddings"]
    assert all(body["model"] == "bge-m3" and body["modality"] == "text" for body in embeds)
    # base64 (exact float32) unless the model cannot: then decimals, from then on.
    formats = [body["encoding_format"] for body in embeds]
    assert formats == (["base64", "float", "float"] if refuse_base64 else ["base64", "base64"])
    reranks = [body for path, body in sent if path == "/rerank"]
    assert reranks == [
        {
            "model": "bge-reranker-v2-m3",
            "query": "q",
            "documents": ["x", "y", "z"],
            "raw_scores": True,
        }
    ]


def test_infinity_with_several_embedding_models_needs_remote_model() -> None:
    several = [*MODELS, {"id": "e5", "stats": {}, "capabilities": ["embed"]}]
    with pytest.raises(
        StartupError, match=r"several models that can embed \(bge-m3, e5\); set REMOTE_MODEL"
    ):
        asyncio.run(infinity_backend(several, []).start())
    sent: list[tuple[str, Any]] = []
    backend = infinity_backend(several, sent, remote_model="e5")
    asyncio.run(backend.start())
    assert backend.model_info(Operation.EMBED).name == "e5"
    assert sent[0][1]["model"] == "e5"


def test_infinity_remote_model_must_be_one_it_serves() -> None:
    with pytest.raises(
        StartupError,
        match="REMOTE_RERANK_MODEL=nope, but the Infinity at "
        "http://infinity:7997 serves no such model that can rerank",
    ):
        asyncio.run(infinity_backend(MODELS, [], remote_rerank_model="nope").start())
