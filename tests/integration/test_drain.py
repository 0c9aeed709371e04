"""The drain deadline on a live bge-serve: a request still running at SHUTDOWN_TIMEOUT_S is
answered 503 with Retry-After in its dialect's error body, the log holds no traceback, and
SIGTERM and SIGINT both end the process with exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.fake_tei import FakeTEI, serve
from tests.fixtures.tiny_models import corpus

DEADLINE_S = 1
# Far longer than the deadline: whatever is asked stays running until it is cut.
SLOW_S = 60


async def _ask(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One POST on its own connection: status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head_block, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_block.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, payload


def _cut(
    server: Server, asks: dict[str, bytes], sig: signal.Signals, running: float
) -> tuple[float, dict[str, tuple[int, dict[str, str], bytes]]]:
    """Sends ``asks``, then ``sig`` once they have run ``running`` s; how long the answers
    took after the signal, and each path's answer."""
    port = int(server.url.rsplit(":", 1)[1])

    async def run() -> tuple[float, list[tuple[int, dict[str, str], bytes]]]:
        pending = [asyncio.ensure_future(_ask(port, path, body)) for path, body in asks.items()]
        await asyncio.sleep(running)
        signalled = time.monotonic()
        server.process.send_signal(sig)
        answers = await asyncio.wait_for(asyncio.gather(*pending), timeout=30)
        return time.monotonic() - signalled, answers

    after, answers = asyncio.run(run())
    return after, dict(zip(asks, answers, strict=True))


def _assert_no_traceback(server: Server) -> None:
    log = server.log.read_text()
    for trace in ("Traceback", "CancelledError", "KeyboardInterrupt", "Internal Server Error"):
        assert trace not in log, log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_colbert_request_cut_by_the_deadline_is_a_503_and_the_process_exits_zero(
    models: ModelDirs, sig: signal.Signals
) -> None:
    # The reproducer, longer: 2,048 texts with ColBERT. With packed passes on a
    # Zen 4 core the first version (6 sentences a text, ~30 s before) took under 2.5 s.
    server = start_server(
        models,
        {
            "SHUTDOWN_TIMEOUT_S": str(DEADLINE_S),
            "MAX_BATCH_SIZE": "2048",
            "MAX_REQUEST_BYTES": str(16 * 2**20),
            # Room for the answer's estimate: the request is cut long before it exists.
            "MAX_RESPONSE_BYTES": str(2**30),
            "MAX_INFLIGHT_RESPONSE_BYTES": str(2**31),
        },
    )
    try:
        texts = [" ".join(corpus(12, seed=i)) for i in range(2048)]
        body = json.dumps({"input": texts, "return_colbert": True}).encode()
        after, answers = _cut(server, {"/v1/hybrid-embeddings": body}, sig, running=1.5)
        status, headers, payload = answers["/v1/hybrid-embeddings"]
        assert status == 503, payload
        assert headers["retry-after"] == "1"
        assert headers["content-type"] == "application/json"
        error = json.loads(payload)["error"]
        assert error["type"] == "unavailable_error"
        assert "SHUTDOWN_TIMEOUT_S" in error["message"]
        # Cut at the deadline, not answered once the work was done.
        assert DEADLINE_S <= after < DEADLINE_S + 5
        assert server.process.wait(timeout=60) == 0
        _assert_no_traceback(server)
    finally:
        stop_server(server)


def _posts(fake: FakeTEI) -> int:
    return sum(1 for request in fake.requests if request.method == "POST")


@pytest.fixture
def slow_remotes() -> Iterator[tuple[FakeTEI, str, FakeTEI, str]]:
    embedder = FakeTEI(kind="embedding", dimension=32)
    reranker = FakeTEI(kind="reranker")
    with serve(embedder) as embed_url, serve(reranker) as rerank_url:
        yield embedder, embed_url, reranker, rerank_url


def test_every_dialect_gets_its_own_503_body_when_cut(
    models: ModelDirs, slow_remotes: tuple[FakeTEI, str, FakeTEI, str]
) -> None:
    embedder, embed_url, reranker, rerank_url = slow_remotes
    server = start_server(
        models,
        {
            "SHUTDOWN_TIMEOUT_S": str(DEADLINE_S),
            "EMBED_BACKENDS": "remote",
            "RERANK_BACKENDS": "remote",
            "LEXICAL_COLBERT_BACKENDS": "none",
            "REMOTE_EMBED_URL": embed_url,
            "REMOTE_RERANK_URL": rerank_url,
            "REMOTE_TIMEOUT_S": str(SLOW_S),
        },
    )
    try:
        embedder.delay_s = reranker.delay_s = SLOW_S
        before = _posts(embedder), _posts(reranker)
        asks = {
            "/v1/embeddings": {"input": ["a text"]},  # OpenAI
            "/embed": {"inputs": "a text"},  # TEI
            "/v1/rerank": {"query": "q", "documents": ["d"]},  # Cohere
            "/rerank": {"query": "q", "texts": ["d"]},  # the bare route, in TEI's shape
        }
        after, answers = _cut(
            server,
            {path: json.dumps(body).encode() for path, body in asks.items()},
            signal.SIGTERM,
            running=1.0,
        )
        # Each had reached its remote: it was running when the signal came.
        assert (_posts(embedder), _posts(reranker)) == (before[0] + 2, before[1] + 2)
        for path, (status, headers, payload) in answers.items():
            assert status == 503, (path, payload)
            assert headers["retry-after"] == "1", path
            error = json.loads(payload)
            if path in ("/embed", "/rerank"):
                assert error["error_type"] == "Unhealthy", path
                assert "SHUTDOWN_TIMEOUT_S" in error["error"]
            else:
                assert error["error"]["type"] == "unavailable_error", path
                assert error["error"]["code"] == "unavailable"
        assert DEADLINE_S <= after < DEADLINE_S + 5
        assert server.process.wait(timeout=30) == 0
        _assert_no_traceback(server)
    finally:
        stop_server(server)
