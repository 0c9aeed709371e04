"""A budget for every request, checked before any work (issue 19, item 3), on live bge-serve
processes; memory from /proc/PID/status.

The reproducers, scaled down with small limits so each takes seconds:
- 2,048 texts of ~31k characters: each text was tokenized whole and its overflow kept
  (8 GB). Here 256 such texts with a 32-token limit: the tokenizer must see a cut.
- /tokenize of a 16 MB body (a 988 MB answer): refused past MAX_RESPONSE_BYTES, early.
- /embed_all on an 8,192-token model (4 texts: a 710 MB answer): refused from the token
  counts, before a forward pass.
- rerank with max_tokens_per_doc tokenized whole documents.
- a one-text request waited 13-17 s behind one 16 MB request.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.fixtures.long_models import LONG_MAX_TOKENS, build_long_m3
from tests.fixtures.tiny_models import corpus

WORDS = " ".join(corpus(3000, seed=11))
LONG = (WORDS * 2)[:30_000]  # ~31k characters, as the reproducer's


def _peak_mb(server: Server) -> tuple[int, int]:
    """(VmHWM, VmRSS) of the server process, MB."""
    values = {}
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(value.split()[0]) // 1024
    return values["VmHWM"], values["VmRSS"]


_LIMITS = {
    "MAX_BATCH_SIZE": "2048",
    "MAX_TEXT_CHARS": "100000",
    "MAX_REQUEST_BYTES": str(16 * 1024 * 1024),
}


@pytest.fixture(scope="module")
def short_limit(models: ModelDirs) -> Iterator[Server]:
    """The tiny model cut at 32 tokens: a 30k-character text is 1,000 times its limit."""
    server = start_server(models, {**_LIMITS, "MAX_INPUT_TOKENS": "32"})
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def long_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_long_m3(tmp_path_factory.mktemp("long") / "bge-m3")


@pytest.fixture(scope="module")
def long_model(models: ModelDirs, long_folder: Path) -> Iterator[Server]:
    server = start_server(
        ModelDirs(m3=long_folder, reranker=models.reranker),
        {**_LIMITS, "MAX_RESPONSE_BYTES": "4000000", "MAX_REQUEST_TOKENS": "200000"},
    )
    yield server
    stop_server(server)


def test_long_texts_are_cut_before_tokenizing(short_limit: Server) -> None:
    """256 texts of 30k characters (7.7 MB): tokenized whole, ~5 M tokens and a peak of
    hundreds of MB; cut, a few thousand characters each at most."""
    before, _ = _peak_mb(short_limit)
    began = time.monotonic()
    answer = httpx.post(
        f"{short_limit.url}/v1/embeddings", json={"input": [LONG] * 256}, timeout=300
    )
    took = time.monotonic() - began
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] == 256 * 32
    after, _ = _peak_mb(short_limit)
    assert after - before < 150, f"peak RSS rose {after - before} MB"
    assert took < 20, f"{took:.1f} s"


def test_the_cut_answers_what_the_whole_text_does(short_limit: Server, models: ModelDirs) -> None:
    """Long texts (one behind a 3,000-character word) embed as the text cut by
    hand at its 30th token's end, from its whole tokenization: a text the service need
    not cut."""
    url = f"{short_limit.url}/v1/embeddings"
    texts = [LONG, LONG[7:9000], "x" * 3000 + " " + LONG[:3000]]
    tokenizer = AutoTokenizer.from_pretrained(models.m3)  # type: ignore[no-untyped-call]
    by_hand = []
    for text in texts:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        by_hand.append(text[: offsets["offset_mapping"][29][1]])
    served = httpx.post(url, json={"input": texts}, timeout=60).json()["data"]
    answer = httpx.post(url, json={"input": by_hand}, timeout=60)
    assert answer.status_code == 200, answer.text
    expected = answer.json()["data"]
    for got, want in zip(served, expected, strict=True):
        assert got["embedding"] == pytest.approx(want["embedding"], abs=1e-6)


def test_a_one_text_request_is_not_stuck_behind_a_large_one(short_limit: Server) -> None:
    done: dict[str, float] = {}

    def large() -> None:
        httpx.post(
            f"{short_limit.url}/v1/embeddings",
            json={"input": [LONG + str(i) for i in range(512)]},
            timeout=300,
        )
        done["large"] = time.monotonic()

    thread = threading.Thread(target=large)
    thread.start()
    time.sleep(0.5)  # the large request is being read and tokenized
    began = time.monotonic()
    small = httpx.post(f"{short_limit.url}/v1/embeddings", json={"input": ["hello"]}, timeout=300)
    took = time.monotonic() - began
    thread.join()
    assert small.status_code == 200
    assert took < 3, f"the one-text request took {took:.1f} s"


def test_tokenize_of_a_large_body_is_refused_early(long_model: Server) -> None:
    """A 2 MB /tokenize body is ~1.3 M tokens, a ~100 MB answer: 413 from the first chunk's
    count, naming the limit and the estimate."""
    before, _ = _peak_mb(long_model)
    texts = [(WORDS * 2)[i : i + 20_000] for i in range(100)]
    answer = httpx.post(f"{long_model.url}/tokenize", json={"inputs": texts}, timeout=120)
    assert answer.status_code == 413, answer.text[:300]
    message = answer.json()["error"]
    assert "MAX_RESPONSE_BYTES" in message and "4000000" in message
    assert "bytes as an answer" in message
    after, _ = _peak_mb(long_model)
    assert after - before < 100, f"peak RSS rose {after - before} MB"


def test_tokenize_within_the_budget_answers(long_model: Server) -> None:
    answer = httpx.post(f"{long_model.url}/tokenize", json={"inputs": ["hello world"]})
    assert answer.status_code == 200
    assert [t["text"] for t in answer.json()[0] if not t["special"]]


def test_embed_all_past_the_answer_budget_is_refused_before_a_pass(long_model: Server) -> None:
    """4 texts at the 8,192-token limit: 4 x 8,191 ColBERT rows x 32 x 22 bytes = 23 MB of
    JSON, over 4 MB; refused with the estimate, no pass run."""
    passes = _passes(long_model)
    answer = httpx.post(f"{long_model.url}/embed_all", json={"inputs": [LONG] * 4}, timeout=120)
    assert answer.status_code == 413, answer.text[:300]
    message = answer.json()["error"]
    assert "MAX_RESPONSE_BYTES" in message and "4000000" in message
    # Refused at the first counting call that crosses: two of the texts, or all four.
    counted = re.search(r"~(\d+) bytes \(colbert for (\d+) tokens\)", message)
    assert counted is not None, message
    assert int(counted[2]) in (2 * LONG_MAX_TOKENS, 4 * LONG_MAX_TOKENS)
    assert int(counted[1]) == (int(counted[2]) - int(counted[2]) // LONG_MAX_TOKENS) * 32 * 22
    assert _passes(long_model) == passes
    small = httpx.post(f"{long_model.url}/embed_all", json={"inputs": ["hello world"]})
    assert small.status_code == 200 and len(small.json()[0]) > 1


def test_past_max_request_tokens_is_refused_naming_the_count(long_model: Server) -> None:
    """30 texts at the 8,192-token limit: 245,760 tokens, over 200,000 (dense)."""
    answer = httpx.post(f"{long_model.url}/v1/embeddings", json={"input": [LONG] * 30}, timeout=120)
    assert answer.status_code == 413, answer.text[:300]
    message = answer.json()["error"]["message"]
    assert "MAX_REQUEST_TOKENS" in message and "200000" in message
    assert "at least" in message or f"{30 * LONG_MAX_TOKENS} tokens" in message


def test_rerank_max_tokens_per_doc_cuts_as_the_whole_document(
    long_model: Server, long_folder: Path
) -> None:
    """200 documents of 30k characters cut to 16 tokens score as the documents cut by hand
    from their tokenization, and tokenizing them never holds their ~4 M tokens."""
    before, _ = _peak_mb(long_model)
    documents = [(WORDS * 2)[i : i + 30_000] for i in range(0, 200 * 37, 37)]  # 6 MB
    body = {"query": "where is the cat", "documents": documents, "max_tokens_per_doc": 16}
    answer = httpx.post(f"{long_model.url}/v2/rerank", json=body, timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    after, _ = _peak_mb(long_model)
    assert after - before < 100, f"peak RSS rose {after - before} MB"
    tokenizer = AutoTokenizer.from_pretrained(long_folder)  # type: ignore[no-untyped-call]
    cut = []
    for document in documents:
        # Ordinary words: the first 16 tokens lie well within 3,000 characters.
        encoded = tokenizer(document[:3000], add_special_tokens=False, return_offsets_mapping=True)
        cut.append(document[: encoded["offset_mapping"][15][1]])
    expected = httpx.post(
        f"{long_model.url}/v2/rerank", json={"query": body["query"], "documents": cut}
    )
    scores = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    wanted = {r["index"]: r["relevance_score"] for r in expected.json()["results"]}
    assert scores == pytest.approx(wanted, abs=1e-6)


def _passes(server: Server) -> int:
    stats = httpx.get(f"{server.url}/health").json()["backends"]["flag"]["stats"]
    return int(stats["embed.forward_passes"])


def test_answers_computed_at_once_are_bounded_process_wide(
    models: ModelDirs, long_folder: Path
) -> None:
    """Eight ColBERT requests at once, each within MAX_RESPONSE_BYTES: with a pool of one answer
    (MAX_INFLIGHT_RESPONSE_BYTES=1, so one alone goes) the others get 429 with
    Retry-After, and a client that honours it gets every answer."""
    server = start_server(
        ModelDirs(m3=long_folder, reranker=models.reranker),
        {**_LIMITS, "MAX_INFLIGHT_RESPONSE_BYTES": "1"},
    )
    try:
        body = {"inputs": [LONG[:6000]] * 3}
        first: list[httpx.Response] = []
        answers: list[int] = []

        def client() -> None:
            for attempt in range(200):
                answer = httpx.post(f"{server.url}/embed_all", json=body, timeout=120)
                if attempt == 0:
                    first.append(answer)
                if answer.status_code != 429:
                    answers.append(answer.status_code)
                    return
                time.sleep(float(answer.headers["retry-after"]) / 10)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [200] * 8
        refused = [a for a in first if a.status_code == 429]
        assert refused, [a.status_code for a in first]
        assert {a.status_code for a in first} <= {200, 429}
        assert all(a.headers["retry-after"] == "1" for a in refused)
        assert "MAX_INFLIGHT_RESPONSE_BYTES" in refused[0].text
    finally:
        stop_server(server)
