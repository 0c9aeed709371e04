"""REMOTE_KIND=vllm against real vLLM 0.32 servers (CPU build): answers equal the flag backend's.

Four ``vllm serve --runner pooling`` servers run from .venv-vllm (``make vllm-env``;
``make test`` builds it first), one per pooling task, since a vLLM instance serves one:

- ``embed``, ``token_classify``, ``token_embed``: bge-m3 as ``BgeM3EmbeddingModel``
  (``--hf-overrides``), each with its ``--pooler-config`` task: dense vectors, lexical
  weights, ColBERT vectors. (Read as its config says, XLMRobertaModel, the tiny folder
  does not start: vLLM reads ``position_embedding_type``, which the published bge-m3
  config.json has and transformers 5 no longer writes);
- ``classify``: bge-reranker-v2-m3, ``--max-model-len 512`` (the flag backend's reranker
  limit; vLLM's own would be 514): raw logits from ``/score``.

Every task runs on the CPU build, so nothing here falls back to tests/fake_vllm.py. The
folders are the tests' tiny random-weight ones, built here with two heads of 32
(``hidden_size=64``): vLLM's CPU attention takes head sizes 32, 64, 80, ... and refuses
the session folders' 16 (v1/attention/backends/cpu_attn.py, get_supported_head_sizes).
The servers start together, module-scoped, with ``--enforce-eager`` (no torch.compile
warm-up: ~30 s alone on 2 cores instead of ~70) and ``--dtype float32``. The service's
side is the remote backend in process, through its production HTTP client, and once a
whole bge-serve in front of the vLLMs (loading no model); the flag backend computes the
same texts from the same folders in process.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from backends.flag import FlagBackend
from backends.remote import RemoteBackend
from bench.load import vllm_command, vllm_env
from engine import Operation, Output, Settings
from engine.errors import InputTooLarge
from tests.conftest import ModelDirs, Server, free_port, launch, start_server, stop_server
from tests.fixtures.tiny_models import build_m3, build_reranker
from tests.texts import DOCUMENTS, LONG_TEXT, QUERY, TEXTS

VLLM_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"
# Two heads of 32: the smallest head size vLLM's CPU attention computes.
SHAPE = {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
BGE_M3 = '{"architectures": ["BgeM3EmbeddingModel"]}'
# Special tokens' text, unknown characters, repeated words: lexical weights leave the first
# two out and keep the largest weight of the third.
AWKWARD = ["cats <s> and cats and <unk> cats", "naïve café 🙂 <pad> cats", *TEXTS]
ATOL = 2e-5
STARTUP_S = 600.0  # four servers starting at once on a busy 2-core machine


@dataclass(frozen=True)
class Folders:
    m3: Path
    reranker: Path


@dataclass(frozen=True)
class Instances:
    embed: Server
    token_classify: Server
    token_embed: Server
    classify: Server


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
    root = tmp_path_factory.mktemp("vllm-models")
    return Folders(
        m3=build_m3(root / "bge-m3", **SHAPE),
        reranker=build_reranker(root / "bge-reranker-v2-m3", **SHAPE),
    )


def start_vllm(task: str, folder: Path, served: str, *extra: str) -> Server:
    port = free_port()
    command = [*vllm_command(VLLM_VENV, folder, served, "float32", port), "--enforce-eager"]
    # One thread each: four servers share the cores, and a tiny model gains nothing more.
    env = {**os.environ, **vllm_env(1)}
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200

    log_dir = folder.parent
    return launch(f"vllm-{task}", [*command, *extra], env, url, ready, log_dir, STARTUP_S)


def pooler(task: str) -> tuple[str, ...]:
    """bge-m3's sparse and ColBERT heads, and the one task the instance serves."""
    return ("--hf-overrides", BGE_M3, "--pooler-config", f'{{"task": "{task}"}}')


@pytest.fixture(scope="module")
def instances(folders: Folders) -> Iterator[Instances]:
    if not (VLLM_VENV / "bin" / "python").exists():
        pytest.fail(f"no {VLLM_VENV}: `make vllm-env` builds it (`make test` does first)")
    plans: dict[str, tuple[Path, str, tuple[str, ...]]] = {
        "embed": (folders.m3, "bge-m3", pooler("embed")),
        "token_classify": (folders.m3, "bge-m3", pooler("token_classify")),
        "token_embed": (folders.m3, "bge-m3", pooler("token_embed")),
        "classify": (folders.reranker, "bge-reranker-v2-m3", ("--max-model-len", "512")),
    }
    with ThreadPoolExecutor(len(plans)) as pool:
        futures = {
            task: pool.submit(start_vllm, task, folder, served, *extra)
            for task, (folder, served, extra) in plans.items()
        }
    started = {task: f.result() for task, f in futures.items() if f.exception() is None}
    failed = [f.exception() for f in futures.values() if f.exception() is not None]
    if failed:
        for live in started.values():
            stop_server(live)
        raise RuntimeError(f"vLLM did not start: {failed[0]}")
    yield Instances(**started)
    for live in started.values():
        stop_server(live)


@pytest.fixture(scope="module")
def flag(folders: Folders, loop: asyncio.AbstractEventLoop) -> Iterator[FlagBackend]:
    settings = Settings(
        dtype="float32",
        embedding_model_name=str(folders.m3),
        reranker_model_name=str(folders.reranker),
        device="cpu",
    )
    backend = FlagBackend(settings, frozenset(Operation))
    loop.run_until_complete(backend.start())
    yield backend
    loop.run_until_complete(backend.stop())


def remote(
    folders: Folders,
    loop: asyncio.AbstractEventLoop,
    operations: frozenset[Operation],
    *,
    embed: str | None = None,
    sparse: str | None = None,
    rerank: str | None = None,
) -> RemoteBackend:
    settings = Settings(
        embedding_model_name=str(folders.m3),
        reranker_model_name=str(folders.reranker),
        remote_kind="auto",
        remote_timeout_s=120.0,
        remote_embed_url=embed,
        remote_sparse_url=sparse,
        remote_rerank_url=rerank,
    )
    backend = RemoteBackend(settings, operations)
    loop.run_until_complete(backend.start())
    return backend


@pytest.fixture(scope="module")
def proxy(
    instances: Instances, folders: Folders, loop: asyncio.AbstractEventLoop
) -> Iterator[RemoteBackend]:
    """Dense, lexical weights and rerank, each from its own vLLM, found by REMOTE_KIND=auto."""
    backend = remote(
        folders,
        loop,
        frozenset(Operation),
        embed=instances.embed.url,
        sparse=instances.token_classify.url,
        rerank=instances.classify.url,
    )
    yield backend
    loop.run_until_complete(backend.stop())


@pytest.fixture(scope="module")
def colbert_proxy(
    instances: Instances, folders: Folders, loop: asyncio.AbstractEventLoop
) -> Iterator[RemoteBackend]:
    backend = remote(
        folders,
        loop,
        frozenset({Operation.LEXICAL_COLBERT}),
        sparse=instances.token_embed.url,
    )
    yield backend
    loop.run_until_complete(backend.stop())


def test_auto_finds_each_vllm_and_its_task(
    proxy: RemoteBackend, colbert_proxy: RemoteBackend
) -> None:
    health = proxy.health()
    assert health.healthy, health.detail
    assert "vLLM 0.32.0 serving embed (bge-m3), task embed" in health.detail
    assert "serving lexical_colbert (bge-m3), task token_classify" in health.detail
    assert "serving rerank (bge-reranker-v2-m3), task classify" in health.detail
    assert "task token_embed" in colbert_proxy.health().detail
    assert proxy.model_info(Operation.EMBED).dimension == SHAPE["hidden_size"]
    assert proxy.model_info(Operation.EMBED).max_tokens == 512


def test_dense_equals_flag(
    proxy: RemoteBackend, flag: FlagBackend, loop: asyncio.AbstractEventLoop
) -> None:
    dense = frozenset({Output.DENSE})
    ours = loop.run_until_complete(proxy.encode(AWKWARD, dense))
    theirs = loop.run_until_complete(flag.encode(AWKWARD, dense))
    assert ours.dense is not None and theirs.dense is not None
    np.testing.assert_allclose(ours.dense, theirs.dense, atol=ATOL)
    # LONG_TEXT is over 512 tokens: both cut it the same way, and count the same tokens.
    assert ours.token_count == theirs.token_count


def test_lexical_weights_equal_flag(
    proxy: RemoteBackend, flag: FlagBackend, loop: asyncio.AbstractEventLoop
) -> None:
    lexical = frozenset({Output.LEXICAL})
    ours = loop.run_until_complete(proxy.encode(AWKWARD, lexical))
    theirs = loop.run_until_complete(flag.encode(AWKWARD, lexical))
    assert ours.lexical is not None and theirs.lexical is not None
    assert sum(len(w.token_ids) for w in theirs.lexical) > len(AWKWARD)  # the check has teeth
    for got, want in zip(ours.lexical, theirs.lexical, strict=True):
        got_weights = dict(zip(got.token_ids.tolist(), got.weights.tolist(), strict=True))
        want_weights = dict(zip(want.token_ids.tolist(), want.weights.tolist(), strict=True))
        # A weight at the relu's edge may fall either side of 0 in the other's arithmetic.
        for token in got_weights.keys() ^ want_weights.keys():
            assert max(got_weights.get(token, 0.0), want_weights.get(token, 0.0)) < ATOL
        shared = sorted(got_weights.keys() & want_weights.keys())
        # Weights reach 3, and vLLM's attention kernel is not torch's: float32 rounding.
        np.testing.assert_allclose(
            [got_weights[t] for t in shared],
            [want_weights[t] for t in shared],
            rtol=2e-4,
            atol=ATOL,
        )
    assert ours.token_count == theirs.token_count


def test_colbert_equals_flag(
    colbert_proxy: RemoteBackend, flag: FlagBackend, loop: asyncio.AbstractEventLoop
) -> None:
    colbert = frozenset({Output.COLBERT})
    ours = loop.run_until_complete(colbert_proxy.encode(AWKWARD, colbert))
    theirs = loop.run_until_complete(flag.encode(AWKWARD, colbert))
    assert ours.colbert is not None and theirs.colbert is not None
    for got, want in zip(ours.colbert, theirs.colbert, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=ATOL)
    assert ours.token_count == theirs.token_count


def test_rerank_equals_flag(
    proxy: RemoteBackend, flag: FlagBackend, loop: asyncio.AbstractEventLoop
) -> None:
    ours = loop.run_until_complete(proxy.score(QUERY, DOCUMENTS))
    theirs = loop.run_until_complete(flag.score(QUERY, DOCUMENTS))
    np.testing.assert_allclose(ours.logits, theirs.logits, atol=1e-4)
    assert len(set(np.round(theirs.logits, 3))) > len(DOCUMENTS) // 2  # not all alike
    assert ours.token_count == theirs.token_count


def test_token_ids_equal_flag(
    proxy: RemoteBackend, flag: FlagBackend, loop: asyncio.AbstractEventLoop
) -> None:
    ours = loop.run_until_complete(proxy.token_ids(AWKWARD))
    theirs = loop.run_until_complete(flag.token_ids(AWKWARD))
    assert ours == theirs
    assert max(len(ids) for ids in ours) > 512  # LONG_TEXT, uncut: what validation counts


def test_a_text_over_max_model_len_is_too_large_without_truncation(
    instances: Instances, folders: Folders, loop: asyncio.AbstractEventLoop
) -> None:
    settings = Settings(
        embedding_model_name=str(folders.m3),
        remote_embed_url=instances.embed.url,
        remote_kind="vllm",
        truncate=False,
    )
    backend = RemoteBackend(settings, frozenset({Operation.EMBED}))
    loop.run_until_complete(backend.start())
    try:
        with pytest.raises(InputTooLarge, match="maximum context length is 512 tokens"):
            loop.run_until_complete(backend.encode([LONG_TEXT], frozenset({Output.DENSE})))
    finally:
        loop.run_until_complete(backend.stop())


@pytest.fixture(scope="module")
def front(instances: Instances, folders: Folders) -> Iterator[Server]:
    """A bge-serve with no model of its own: every operation from vLLM."""
    live = start_server(
        ModelDirs(m3=folders.m3, reranker=folders.reranker),
        {
            "EMBED_BACKENDS": "remote",
            "LEXICAL_COLBERT_BACKENDS": "remote",
            "RERANK_BACKENDS": "remote",
            "REMOTE_EMBED_URL": instances.embed.url,
            "REMOTE_SPARSE_URL": instances.token_classify.url,
            "REMOTE_RERANK_URL": instances.classify.url,
        },
    )
    yield live
    stop_server(live)


def test_a_front_bge_serve_answers_as_the_flag_backend(
    front: Server, flag: FlagBackend, loop: asyncio.AbstractEventLoop
) -> None:
    def post(path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        response = httpx.post(f"{front.url}{path}", json=body, timeout=120)
        assert response.status_code == 200, response.text
        key = "results" if path == "/v1/rerank" else "data"
        rows: list[dict[str, Any]] = response.json()[key]
        return rows

    texts = AWKWARD[:8]
    encoding = loop.run_until_complete(
        flag.encode(texts, frozenset({Output.DENSE, Output.LEXICAL}))
    )
    assert encoding.dense is not None and encoding.lexical is not None
    dense = post("/v1/embeddings", {"input": texts})
    np.testing.assert_allclose(
        np.array([row["embedding"] for row in dense]), encoding.dense, atol=ATOL
    )
    sparse_rows = post("/v1/sparse-embeddings", {"input": texts})
    for row, weights in zip(sparse_rows, encoding.lexical, strict=True):
        sparse = row["sparse"]
        got = dict(zip(sparse["indices"], sparse["values"], strict=True))
        want = dict(zip(weights.token_ids.tolist(), weights.weights.tolist(), strict=True))
        shared = sorted(got.keys() & want.keys())
        assert len(shared) >= len(want) - 1  # at most a weight at the relu's edge apart
        np.testing.assert_allclose(
            [got[t] for t in shared], [want[t] for t in shared], rtol=2e-4, atol=ATOL
        )
    logits = loop.run_until_complete(flag.score(QUERY, DOCUMENTS)).logits
    ranked = post("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "raw_scores": True})
    by_index = {row["index"]: row["relevance_score"] for row in ranked}
    np.testing.assert_allclose(
        np.array([by_index[i] for i in range(len(DOCUMENTS))]), logits, atol=1e-4
    )
