"""One Redis shared by services that serve other weights under the same model name, and
entries that lie: each service answers what it computes itself (issue 19, items 4-5).

Real ``bge-serve`` processes over a real ``redis-server``; every service is told
``EMBEDDING_MODEL_NAME=BAAI/bge-m3`` and finds its own folder under its ``MODELS_DIR``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from engine.cache import encode_entry
from engine.types import Output, TokenWeights
from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.fixtures.tiny_models import build_m3, corpus
from tests.integration.test_cache_redis import RedisServer

NAME = "BAAI/bge-m3"
TEXTS = corpus(6, seed=41)


@dataclass(frozen=True)
class Services:
    wide: Server  # 32-dim, seed 0
    replica: Server  # a copy of wide's folder, elsewhere, written later (other mtimes)
    narrow: Server  # 16-dim
    other: Server  # 32-dim, other weights


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-models"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def services(
    models: ModelDirs, store: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("models-dirs")
    folders = {
        "wide": build_m3(root / "wide" / "bge-m3", seed=0),
        "narrow": build_m3(root / "narrow" / "bge-m3", seed=1, hidden_size=16),
        "other": build_m3(root / "other" / "bge-m3", seed=2),
    }
    shutil.copytree(folders["wide"], root / "replica" / "bge-m3")
    started: dict[str, Server] = {}
    try:
        for name in ("wide", "replica", "narrow", "other"):
            env = {
                "REDIS_URL": store.url,
                "CACHE_TTL_S": "600",
                "EMBEDDING_MODEL_NAME": NAME,
                "MODELS_DIR": str(root / name),
            }
            started[name] = start_server(models, env)
        yield Services(**started)
    finally:
        for server in started.values():
            stop_server(server)


def hybrid(server: Server, texts: list[str]) -> dict[str, Any]:
    body = {"input": texts, "return_colbert": True, "mapping": "tokenizer"}
    response = httpx.post(f"{server.url}/v1/hybrid-embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def passes(server: Server) -> int:
    stats = httpx.get(f"{server.url}/health").json()["backends"]["flag"]["stats"]
    return int(stats["embed.forward_passes"])


def flush(store: RedisServer) -> None:
    redis.Redis(port=store.port).flushdb()


def own_answer(server: Server, texts: list[str], store: RedisServer) -> dict[str, Any]:
    """What ``server`` computes for ``texts`` from an empty cache."""
    flush(store)
    return hybrid(server, texts)


def test_other_weights_of_the_same_shape_do_not_answer(
    services: Services, store: RedisServer
) -> None:
    texts = TEXTS[:3]
    truth = own_answer(services.other, texts, store)
    flush(store)
    hybrid(services.wide, texts)  # the wide service's vectors, under the shared name
    before = passes(services.other)
    assert hybrid(services.other, texts) == truth
    assert passes(services.other) > before  # computed: the entries were not its own


def test_a_narrower_model_answers_its_own_vectors_and_mixed_batches(
    services: Services, store: RedisServer
) -> None:
    texts, fresh = TEXTS[:3], TEXTS[3]
    truth = own_answer(services.narrow, [*texts, fresh], store)
    assert len(truth["data"][0]["dense"]) == 16
    flush(store)
    wide = hybrid(services.wide, texts)
    assert len(wide["data"][0]["dense"]) == 32
    # Three texts the wide service cached and one nobody has: one batch, the narrow
    # service's own vectors for all four.
    assert hybrid(services.narrow, [*texts, fresh]) == truth
    # Both kept apart in the one Redis: each answers its own from it, computing nothing.
    for server, expected in ((services.narrow, truth), (services.wide, wide)):
        asked = [*texts, fresh] if server is services.narrow else texts
        before = passes(server)
        assert hybrid(server, asked) == expected
        assert passes(server) == before


def test_a_copy_of_the_same_weights_shares_entries(services: Services, store: RedisServer) -> None:
    texts = TEXTS[4:6]
    flush(store)
    computed = hybrid(services.wide, texts)
    before = passes(services.replica)
    assert hybrid(services.replica, texts) == computed
    assert passes(services.replica) == before  # every text answered from Redis


# -- entries that lie ------------------------------------------------------------------


def keys_of(server: Server, text: str, store: RedisServer) -> dict[str, bytes]:
    """The Redis keys ``server`` stores ``text``'s heads under, by head, found by
    computing it (the keys are the service's own, not rebuilt here)."""
    client = redis.Redis(port=store.port)
    before = set(client.scan_iter("bge:*"))
    hybrid(server, [text])
    added = set(client.scan_iter("bge:*")) - before
    by_head = {key.split(b":")[1].decode(): key for key in added}
    assert sorted(by_head) == ["colbert", "dense", "lexical"], added
    return by_head


def _dense(value: bytes) -> np.ndarray[Any, Any]:
    return np.frombuffer(value, dtype="<f4", offset=5)


def _tokens(value: bytes) -> int:
    return int.from_bytes(value[:4], "little")


# Each kind: the head whose entry is replaced, what replaces it (from the true entry's
# bytes), and the kind of problem the one log line names.
LIES: dict[str, tuple[str, Any, str]] = {
    "undecodable": ("dense", lambda v: b"\x00\x01garbage", "undecodable"),
    "truncated": ("colbert", lambda v: v[: len(v) // 2], "undecodable"),
    "3-dim": (
        "dense",
        lambda v: encode_entry(Output.DENSE, _tokens(v), [0.6, 0.8, 0]),
        "dimension",
    ),
    "1e6-dim": (
        "dense",
        lambda v: encode_entry(Output.DENSE, _tokens(v), np.full(10**6, 1e-3, np.float32)),
        "dimension",
    ),
    "nan": (
        "dense",
        lambda v: encode_entry(Output.DENSE, _tokens(v), np.where(_dense(v) > 0, np.nan, 0.1)),
        "not finite",
    ),
    "negative sparse ids": (
        "lexical",
        lambda v: encode_entry(
            Output.LEXICAL,
            _tokens(v),
            TokenWeights(np.array([-7, 5]), np.array([0.5, 0.25], np.float32)),
        ),
        "token id",
    ),
    "sparse ids past the vocabulary": (
        "lexical",
        lambda v: encode_entry(
            Output.LEXICAL,
            _tokens(v),
            TokenWeights(np.array([5, 10**6]), np.array([0.5, 0.25], np.float32)),
        ),
        "token id",
    ),
    "20,000 ColBERT rows": (
        "colbert",
        lambda v: encode_entry(
            Output.COLBERT, _tokens(v), np.full((20_000, 32), 32**-0.5, np.float32)
        ),
        "ColBERT rows",
    ),
    "4e9 usage tokens": (
        "dense",
        lambda v: encode_entry(Output.DENSE, 4_000_000_000, _dense(v)),
        "token count",
    ),
    "a sparse entry under a dense key": (
        "dense",
        lambda v: encode_entry(
            Output.LEXICAL, _tokens(v), TokenWeights(np.array([5]), np.array([0.5], np.float32))
        ),
        "head",
    ),
}


def assert_close(got: Any, want: Any) -> None:
    """Equal structure and integers; floats equal to float32 rounding."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for key in want:
            assert_close(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for item, expected in zip(got, want, strict=True):
            assert_close(item, expected)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    else:
        assert got == want


def invalid_lines(server: Server, kind: str) -> list[str]:
    return [
        line
        for line in server.log.read_text().splitlines()
        if f"invalid cache entry ({kind}:" in line
    ]


@pytest.mark.parametrize("kind", list(LIES))
def test_a_lying_entry_is_a_miss_logged_once_and_overwritten(
    services: Services, store: RedisServer, kind: str
) -> None:
    head, lie, word = LIES[kind]
    server = services.wide
    client = redis.Redis(port=store.port)
    for round_ in range(2):  # two texts, two requests: one log line
        text = f"{kind} number {round_}: {TEXTS[round_]}"
        keys = keys_of(server, text, store)
        expected = hybrid(server, [text])  # from the cache, as computed
        true_entry = client.get(keys[head])
        assert true_entry is not None
        client.set(keys[head], lie(true_entry))
        # Alone and in a batch with a cached text and a fresh one.
        assert hybrid(server, [text]) == expected
        assert client.get(keys[head]) == true_entry  # overwritten by the computation
        client.set(keys[head], lie(true_entry))
        fresh = f"fresh {kind} {round_}"
        mixed = hybrid(server, [TEXTS[5], text, fresh])
        # Computed in a batch of two now: the same numbers but for the last bits.
        assert_close(mixed["data"][1], {**expected["data"][0], "index": 1})
        assert mixed == hybrid(server, [TEXTS[5], text, fresh])  # all three cached now
        alone = [hybrid(server, [one])["usage"]["prompt_tokens"] for one in (TEXTS[5], fresh)]
        usage = mixed["usage"]["prompt_tokens"]
        assert usage == sum(alone) + expected["usage"]["prompt_tokens"]
        assert client.get(keys[head]) not in (None, lie(true_entry))
    assert len(invalid_lines(server, word)) == 1, server.log.read_text()[-3000:]
