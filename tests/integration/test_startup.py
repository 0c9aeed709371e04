"""Start-up: fails fast with a message that says what to change; other mappings and limits."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from tests.conftest import (
    ModelDirs,
    Server,
    free_port,
    serve_command,
    server_env,
    start_server,
    stop_server,
)
from tests.fake_tei import FakeTEI, serve
from tests.reference import m3_reference
from tests.texts import LONG_TEXT


def run_to_exit(models: ModelDirs, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = server_env(models, {"PORT": str(free_port()), **extra})
    return subprocess.run(serve_command(), env=env, capture_output=True, text=True, timeout=120)


def test_hub_model_without_hub_fails_fast_with_instructions(models: ModelDirs) -> None:
    result = run_to_exit(models, {"EMBEDDING_MODEL_NAME": "BAAI/bge-m3", "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    assert "EMBEDDING_MODEL_NAME=BAAI/bge-m3" in result.stderr
    assert "point EMBEDDING_MODEL_NAME at" in result.stderr


def test_a_token_encoding_that_cannot_load_stops_the_start(models: ModelDirs) -> None:
    result = run_to_exit(models, {"OPENAI_TOKEN_ENCODING": "no_such_encoding"})
    assert result.returncode == 2
    assert "the tiktoken encoding no_such_encoding (OPENAI_TOKEN_ENCODING)" in result.stderr
    assert "or set OPENAI_TOKEN_ENCODING=off" in result.stderr


def test_missing_folder_fails_fast(models: ModelDirs) -> None:
    result = run_to_exit(models, {"RERANKER_MODEL_NAME": "/nonexistent/reranker"})
    assert result.returncode != 0
    assert "RERANKER_MODEL_NAME=/nonexistent/reranker: no such folder" in result.stderr


def test_a_model_missing_from_models_dir_fails_fast(models: ModelDirs, tmp_path: Path) -> None:
    result = run_to_exit(
        models, {"MODELS_DIR": str(tmp_path), "EMBEDDING_MODEL_NAME": "BAAI/bge-m3"}
    )
    assert result.returncode != 0
    assert f"has no bge-m3; fetch it with `bge-serve download --to {tmp_path}`" in result.stderr


def test_a_taken_port_fails_before_any_model_loads(models: ModelDirs) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        began = time.monotonic()
        result = run_to_exit(models, {"PORT": str(port)})
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "set PORT (--port) to a free port" in result.stderr
    assert "loading" not in result.stderr
    assert time.monotonic() - began < 60


def test_embedding_size_is_checked_against_the_model(models: ModelDirs) -> None:
    result = run_to_exit(models, {"EMBEDDING_SIZE": "1024"})
    assert result.returncode != 0
    assert "EMBEDDING_SIZE=1024" in result.stderr
    assert "32-dimensional" in result.stderr


# What a REMOTE_URL may carry that no message, log line or /health may show.
CREDENTIALS = ("operator", "hunter2", "s3cret-token")


def credentialed(url: str, path: str = "/") -> str:
    """``url`` (http://host:port) with a user, a password and a gateway's token added."""
    return url.replace("http://", "http://operator:hunter2@", 1) + f"{path}?token=s3cret-token"


def test_a_remote_urls_credentials_are_in_no_start_up_error(models: ModelDirs) -> None:
    fake = FakeTEI(kind="embedding", dimension=32)
    with serve(fake) as url:
        result = run_to_exit(
            models,
            {
                "EMBED_BACKENDS": "remote",
                "LEXICAL_COLBERT_BACKENDS": "none",
                "RERANK_BACKENDS": "none",
                "REMOTE_URL": credentialed(url),
                "EMBEDDING_SIZE": "1024",
            },
        )
    # The remote was reached (the token carried as a query parameter) and measured.
    assert result.returncode != 0
    assert f"EMBEDDING_SIZE=1024 but the remote {url} (" in result.stderr, result.stderr
    assert "32-dimensional" in result.stderr
    for secret in CREDENTIALS:
        assert secret not in result.stdout + result.stderr


def test_a_remote_urls_credentials_are_in_no_log_line_or_health_detail(
    models: ModelDirs,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    server = start_server(
        models,
        {
            "EMBED_BACKENDS": "remote,flag",
            "LEXICAL_COLBERT_BACKENDS": "none",
            "RERANK_BACKENDS": "none",
            "REMOTE_URL": credentialed(down, "/base/"),
            "LOG_LEVEL": "info",
        },
        until="started",
    )
    try:
        detail = httpx.get(f"{server.url}/health", timeout=10).json()["backends"]["remote"]
        assert detail["detail"].startswith(f"{down}/base: unreachable")
        refused = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["a"]}, timeout=30)
        assert refused.status_code == 200  # flag answered; the remote is down
        log = server.log.read_text()
        assert f"remote {down}/base is down" in log
        for secret in CREDENTIALS:
            assert secret not in log and secret not in str(detail)
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def tokenizer_server(models: ModelDirs) -> Iterator[Server]:
    live = start_server(
        models,
        {
            "SPARSE_TOKEN_MAPPING": "tokenizer",
            "TRUNCATE": "false",
            "EMBEDDING_SIZE": "32",
            # Repo ids loaded from the layout `bge-serve download` leaves.
            "MODELS_DIR": str(models.m3.parent),
            "EMBEDDING_MODEL_NAME": f"BAAI/{models.m3.name}",
            "RERANKER_MODEL_NAME": f"BAAI/{models.reranker.name}",
            "EMBEDDING_SERVED_NAME": "acme/embedder",
            "RERANKER_SERVED_NAME": "acme/reranker",
            "MODEL_ALIASES": "text-embedding-3-small, rerank-v3.5",
        },
    )
    yield live
    stop_server(live)


def test_tokenizer_mapping_indices_are_token_ids(
    tokenizer_server: Server, models: ModelDirs
) -> None:
    texts = ["hello world", "the quick brown fox"]
    reference = m3_reference(models.m3, texts)
    vocabulary = len(AutoTokenizer.from_pretrained(models.m3))
    body = httpx.post(f"{tokenizer_server.url}/v1/sparse-embeddings", json={"input": texts}).json()
    for item, lexical in zip(body["data"], reference.lexical, strict=True):
        assert item["sparse"]["mapping"] == "tokenizer"
        assert item["sparse"]["index_space"] == vocabulary
        assert item["sparse"]["indices"] == sorted(int(k) for k in lexical)


def test_truncate_off_refuses_long_text(tokenizer_server: Server) -> None:
    response = httpx.post(
        f"{tokenizer_server.url}/v1/embeddings", json={"input": ["short", LONG_TEXT]}
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["param"] == "input[1]"
    assert "tokens" in error["message"]


def test_served_names_and_aliases(tokenizer_server: Server) -> None:
    url = tokenizer_server.url
    assert {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]} == {
        "acme/embedder",
        "acme/reranker",
    }
    for name in ("acme/embedder", "embedder", "text-embedding-3-small"):
        body = httpx.post(f"{url}/v1/embeddings", json={"input": "hi", "model": name}).json()
        assert body["model"] == "acme/embedder", name
    rerank = {"query": "q", "documents": ["d"], "model": "rerank-v3.5"}
    assert httpx.post(f"{url}/v1/rerank", json=rerank).json()["model"] == "acme/reranker"
    assert httpx.get(f"{url}/info").json()["model_id"] == "acme/embedder"
    refused = httpx.post(f"{url}/v1/embeddings", json={"input": "hi", "model": "BAAI/bge-m3"})
    assert refused.status_code == 404
    assert refused.json()["error"]["message"].endswith(
        "embed answers to `acme/embedder`, `embedder`, `text-embedding-3-small`, `rerank-v3.5`"
    )
