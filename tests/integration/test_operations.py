"""Operations on a live server: API keys through the official clients, JSON logs, and a
graceful drain on SIGTERM under load."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import cohere
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.fixtures.tiny_models import corpus

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def locked(models: ModelDirs) -> Iterator[Server]:
    live = start_server(
        models,
        {
            "API_KEY": f"other-key,{KEY}",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",  # the access log too
            "SHUTDOWN_TIMEOUT_S": "60",
        },
    )
    yield live
    stop_server(live)


def test_official_clients_send_the_key(locked: Server) -> None:
    oai = openai.OpenAI(base_url=f"{locked.url}/v1", api_key=KEY, max_retries=0)
    assert len(oai.embeddings.create(model="bge-m3", input="hello").data) == 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{locked.url}/v1", api_key="wrong", max_retries=0).models.list()
    co = cohere.ClientV2(api_key=KEY, base_url=locked.url)
    assert len(co.rerank(model="bge-reranker-v2-m3", query="q", documents=["a", "b"]).results) == 2


def test_logs_are_json_lines_without_keys_or_texts(locked: Server) -> None:
    secret_text = "a text nobody should find in the log"
    httpx.post(
        f"{locked.url}/v1/embeddings",
        json={"input": secret_text},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    httpx.post(f"{locked.url}/v1/embeddings", json={"input": secret_text})  # refused
    lines = [line for line in locked.log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= records[0].keys()
    assert any(r["logger"] == "uvicorn.access" for r in records)
    assert KEY not in locked.log.read_text()
    assert secret_text not in locked.log.read_text()


def test_metrics_scrape_shows_the_flag_backends_passes(locked: Server) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    for size in (1, 3, 5):
        httpx.post(f"{locked.url}/v1/embeddings", json={"input": ["hello"] * size}, headers=headers)
    text = httpx.get(f"{locked.url}/metrics").text  # open: no key needed to scrape
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    embed = (("backend", "flag"), ("model", "embed"))
    passes = samples[("bge_forward_passes_total", embed)]
    assert passes >= 3
    assert samples[("bge_batch_size_count", embed)] == passes
    assert samples[("bge_batch_size_sum", embed)] >= 9  # every text went through a pass
    assert samples[("bge_queue_depth", embed)] == 0  # idle now
    assert samples[("bge_items_total", (("operation", "embed"),))] >= 9


async def _ask(port: int, body: bytes) -> tuple[float, int, bytes]:
    """One request on its own connection; when the answer came, its status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return time.monotonic(), int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_sigterm_answers_every_accepted_request_then_exits_zero(locked: Server) -> None:
    # Runs last in this module: it stops the server.
    port = int(locked.url.rsplit(":", 1)[1])
    texts = [" ".join(corpus(4, seed=i)) for i in range(24)]
    body = json.dumps({"input": texts}).encode()

    async def run() -> tuple[float, list[tuple[float, int, bytes]], bool]:
        asks = [asyncio.ensure_future(_ask(port, body)) for _ in range(200)]
        await asyncio.sleep(1.5)  # every connection accepted, its request read and queued
        signalled = time.monotonic()
        locked.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        try:  # new connections are refused once the drain begins
            _, late = await asyncio.open_connection("127.0.0.1", port)
            late.close()
            refused = False
        except OSError:
            refused = True
        return signalled, list(await asyncio.gather(*asks)), refused

    signalled, answers, refused = asyncio.run(run())
    assert [status for _, status, _ in answers] == [200] * 200
    for _, _, payload in answers:
        assert len(json.loads(payload)["data"]) == len(texts)
    # The test means something only if work was still queued when the signal came.
    assert sum(1 for at, _, _ in answers if at > signalled) >= 10
    assert refused
    assert locked.process.wait(timeout=60) == 0
