"""The remote backend against vLLM's pooling runner, mocked at the HTTP boundary with respx.

The mock is tests/fake_vllm.py, written from vLLM 0.32's source: one pooling task per
instance, its errors and their statuses. The real server is in
tests/integration/test_remote_vllm_live.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import respx

from backends.remote import RemoteBackend
from engine import Operation, Output, Settings
from engine.errors import (
    BackendFailure,
    InputTooLarge,
    InvalidInput,
    Overloaded,
    StartupError,
    Unavailable,
)
from engine.types import EncodeOptions, Encoding, TokenWeights
from tests.fake_vllm import FakeVLLM, Fault

T = TypeVar("T")

EMBED_URL = "http://vllm-embed:8000"
SPARSE_URL = "http://vllm-sparse:8000"
COLBERT_URL = "http://vllm-colbert:8000"
RERANK_URL = "http://vllm-rerank:8000"
TEXTS = [f"text number {i} about {'cats ' * (i % 3)}paris" for i in range(10)]
# Special tokens' text, an unknown word, a word repeated: what the aggregation must handle.
AWKWARD = ["cats <s> and cats and <unk> cats", "café au lait <pad> cats", "cats"]
QUERY = "where do cats live"
SPECIALS = {0, 1, 2, 3}


@pytest.fixture
def embedder() -> FakeVLLM:
    return FakeVLLM(task="embed")


@pytest.fixture
def sparse() -> FakeVLLM:
    return FakeVLLM(task="token_classify")


@pytest.fixture
def colbert() -> FakeVLLM:
    return FakeVLLM(task="token_embed")


@pytest.fixture
def reranker() -> FakeVLLM:
    return FakeVLLM(
        task="classify",
        model="BAAI/bge-reranker-v2-m3",
        architecture="XLMRobertaForSequenceClassification",
    )


@pytest.fixture
def vllm(
    embedder: FakeVLLM, sparse: FakeVLLM, colbert: FakeVLLM, reranker: FakeVLLM
) -> Iterator[respx.MockRouter]:
    fakes = {"vllm-embed": embedder, "vllm-sparse": sparse, "vllm-colbert": colbert}
    fakes["vllm-rerank"] = reranker
    with respx.mock(assert_all_called=False) as router:
        for host, fake in fakes.items():
            router.route(host=host).mock(side_effect=fake.respx_side_effect)
        yield router
    # Whatever a test did, no body carried a field vLLM does not read.
    for fake in fakes.values():
        assert fake.contract_violations == []


ALL = frozenset(Operation)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "remote_embed_url": EMBED_URL,
        "remote_sparse_url": SPARSE_URL,
        "remote_rerank_url": RERANK_URL,
        "remote_kind": "auto",
        "remote_timeout_s": 5.0,
        "remote_probe_interval_s": 0.05,
        **overrides,
    }
    return Settings(**values)


def with_backend(
    work: Callable[[RemoteBackend], Awaitable[T]],
    operations: frozenset[Operation] = ALL,
    **overrides: Any,
) -> T:
    async def run() -> T:
        # respx patches httpx's own transport; production uses the lean pooled one.
        backend = RemoteBackend(
            settings(**overrides), operations, transport=httpx.AsyncHTTPTransport
        )
        await backend.start()
        try:
            return await work(backend)
        finally:
            await backend.stop()

    return asyncio.run(run())


async def encode(
    backend: RemoteBackend,
    texts: list[str],
    *outputs: Output,
    options: EncodeOptions | None = None,
) -> Encoding:
    return await backend.encode(texts, frozenset(outputs), options or EncodeOptions())


def posted(fake: FakeVLLM, path: str) -> list[Any]:
    return [r.json for r in fake.requests if r.method == "POST" and r.path == path]


def reference_weights(fake: FakeVLLM, text: str) -> dict[int, float]:
    """FlagEmbedding's lexical weights, worked out from the fake's per-token weights: special
    tokens left out, weights above 0, the largest of each id."""
    ids = fake.tokenize(text)[0]
    weights: dict[int, float] = {}
    for position, token in enumerate(ids[1:-1], start=1):
        weight = max(0.0, fake.token_weight(token, position))
        if token in SPECIALS or weight <= 0:
            continue
        weights[token] = max(weights.get(token, 0.0), weight)
    return weights


def test_auto_finds_vllm_and_the_task_each_url_serves(
    vllm: respx.MockRouter, embedder: FakeVLLM, sparse: FakeVLLM
) -> None:
    async def work(backend: RemoteBackend) -> None:
        health = backend.health()
        assert health.healthy and health.loaded
        assert "vLLM 0.32.0 serving embed (BAAI/bge-m3), task embed" in health.detail
        assert "serving lexical_colbert (BAAI/bge-m3), task token_classify" in health.detail
        assert "serving rerank (BAAI/bge-reranker-v2-m3), task classify" in health.detail
        info = backend.model_info(Operation.EMBED)
        assert (info.name, info.dimension, info.max_tokens) == ("BAAI/bge-m3", 8, 512)

    with_backend(work)
    # The other kinds' routes first (vLLM answers /health with an empty 200 and 404 at /info
    # and /models), then vLLM's: its model list and its version.
    gets = [r.path for r in embedder.requests if r.method == "GET"]
    assert gets[:5] == ["/health", "/info", "/models", "/v1/models", "/version"]
    # The instance was asked for its task: embed, the first it was asked, answered.
    assert [body["task"] for body in posted(embedder, "/pooling")] == ["embed"]
    assert [body["task"] for body in posted(sparse, "/pooling")] == ["embed", "token_classify"]


def test_remote_kind_vllm_probes_it_as_vllm(vllm: respx.MockRouter, embedder: FakeVLLM) -> None:
    with_backend(lambda b: asyncio.sleep(0), frozenset({Operation.EMBED}), remote_kind="vllm")
    assert [r.path for r in embedder.requests if r.method == "GET"] == ["/v1/models", "/version"]


def test_dense_comes_from_v1_embeddings_as_base64_float32(
    vllm: respx.MockRouter, embedder: FakeVLLM
) -> None:
    encoding = with_backend(lambda b: encode(b, TEXTS, Output.DENSE))
    expected = np.array([embedder.vector(t) for t in TEXTS], dtype=np.float32)
    np.testing.assert_array_equal(encoding.dense, expected)
    assert encoding.token_count == sum(len(embedder.tokenize(t)[0]) for t in TEXTS)
    body = posted(embedder, "/v1/embeddings")[-1]
    assert body["input"] == TEXTS and body["model"] == "BAAI/bge-m3"
    assert (body["encoding_format"], body["embed_dtype"], body["endianness"]) == (
        "base64",
        "float32",
        "little",
    )
    # TRUNCATE=true (the default): vLLM cuts to max_model_len, special tokens kept.
    assert body["use_activation"] is True and body["truncate_prompt_tokens"] == -1


def test_unnormalised_dense_is_vllms_pooled_state(
    vllm: respx.MockRouter, embedder: FakeVLLM
) -> None:
    raw = EncodeOptions(normalize=False)
    encoding = with_backend(lambda b: encode(b, TEXTS[:3], Output.DENSE, options=raw))
    expected = [embedder.vector(t, normalize=False) for t in TEXTS[:3]]
    np.testing.assert_array_equal(encoding.dense, np.array(expected, dtype=np.float32))
    assert posted(embedder, "/v1/embeddings")[-1]["use_activation"] is False


def test_lexical_weights_are_the_token_weights_joined_with_tokenize_as_flag_makes_them(
    vllm: respx.MockRouter, sparse: FakeVLLM
) -> None:
    texts = [*AWKWARD, *TEXTS]
    encoding = with_backend(lambda b: encode(b, texts, Output.LEXICAL))
    assert encoding.lexical is not None
    for text, weights in zip(texts, encoding.lexical, strict=True):
        expected = reference_weights(sparse, text)
        assert weights.token_ids.tolist() == sorted(expected)
        np.testing.assert_array_equal(
            weights.weights, np.array([expected[i] for i in sorted(expected)], dtype=np.float32)
        )
    # The check has teeth: specials and an unknown word were there, and were left out.
    ids = sparse.tokenize(AWKWARD[0])[0]
    assert {0, 3} <= set(ids[1:-1]) and not {0, 3} & set(encoding.lexical[0].token_ids.tolist())
    assert ids.count(ids[1]) == 3  # "cats", three times: its largest weight is kept
    # One /tokenize per text (after the probe's), then the ids go to /pooling: each weight
    # belongs to an id by construction.
    tokenized = [body["prompt"] for body in posted(sparse, "/tokenize")]
    assert tokenized[-len(texts) :] == texts
    body = posted(sparse, "/pooling")[-1]
    assert body["task"] == "token_classify"
    assert body["input"] == [sparse.tokenize(t)[0] for t in texts]
    assert encoding.token_count == sum(len(sparse.tokenize(t)[0]) for t in texts)
    assert encoding.text_tokens == tuple(len(sparse.tokenize(t)[0]) for t in texts)


def test_lexical_weights_aggregate_as_flag_does() -> None:
    ids = np.array([7, 0, 9, 7, 3, 9, 1], dtype=np.int64)
    weights = np.array([0.5, 4.0, 0.0, 1.5, 2.0, 0.25, 3.0], dtype=np.float32)
    got = TokenWeights.of_tokens(ids, weights, np.array([0, 1, 2, 3], dtype=np.int64))
    assert got.token_ids.tolist() == [7, 9]
    assert got.weights.tolist() == [1.5, 0.25]


def test_colbert_rows_are_token_embed_after_bos_normalised(
    vllm: respx.MockRouter, colbert: FakeVLLM
) -> None:
    operations = frozenset({Operation.LEXICAL_COLBERT})
    encoding = with_backend(
        lambda b: encode(b, TEXTS, Output.COLBERT),
        operations,
        remote_sparse_url=COLBERT_URL,
    )
    assert encoding.colbert is not None
    for text, matrix in zip(TEXTS, encoding.colbert, strict=True):
        ids = colbert.tokenize(text)[0]
        assert matrix.shape == (len(ids) - 1, 8)  # every token but BOS, EOS included
        np.testing.assert_array_equal(matrix, colbert.colbert_rows(ids))
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-6)
    assert posted(colbert, "/pooling")[-1]["task"] == "token_embed"


def test_an_instance_computes_its_one_head_and_refuses_the_others(
    vllm: respx.MockRouter,
) -> None:
    async def work(backend: RemoteBackend) -> None:
        # The router passes these to the next backend of the chain (flag).
        with pytest.raises(Unavailable, match="cannot compute colbert"):
            await encode(backend, TEXTS, Output.COLBERT)
        with pytest.raises(Unavailable, match="cannot compute dense"):
            await encode(backend, TEXTS, Output.DENSE, Output.LEXICAL)

    with_backend(work, frozenset({Operation.LEXICAL_COLBERT}))


def test_rerank_is_raw_logits_from_score_split_and_in_order(
    vllm: respx.MockRouter, reranker: FakeVLLM
) -> None:
    documents = [f"document {n} says cats live in {'warm ' * (n % 4)}places" for n in range(300)]
    scores = with_backend(lambda b: b.score(QUERY, documents), frozenset({Operation.RERANK}))
    expected = [reranker.logit(QUERY, d) for d in documents]
    np.testing.assert_allclose(scores.logits, expected, rtol=1e-6)
    bodies = posted(reranker, "/score")
    assert [len(body["documents"]) for body in bodies] == [256, 44]
    assert all(body["use_activation"] is False and body["queries"] == QUERY for body in bodies)
    assert scores.token_count == sum(len(reranker.pair_ids(QUERY, d)) for d in documents)


def test_too_long_is_the_requests_fault_and_truncation_cuts_as_vllm_does() -> None:
    short = FakeVLLM(task="token_classify", max_model_len=6)
    long_text = "one two three four five six seven"

    async def refused(backend: RemoteBackend) -> None:
        with pytest.raises(InputTooLarge, match="maximum context length is 6 tokens"):
            await encode(backend, [long_text], Output.LEXICAL)

    async def cut(backend: RemoteBackend) -> Encoding:
        # Uncut, as the flag backend's: the engine counts them against the limit.
        assert await backend.token_ids([long_text]) == (short.tokenize(long_text)[0],)
        return await encode(backend, [long_text], Output.LEXICAL)

    with respx.mock(assert_all_called=False) as router:
        router.route(host="vllm-sparse").mock(side_effect=short.respx_side_effect)
        with_backend(refused, frozenset({Operation.LEXICAL_COLBERT}), truncate=False)
        encoding = with_backend(cut, frozenset({Operation.LEXICAL_COLBERT}))
    assert encoding.token_count == 6
    assert encoding.lexical is not None
    # Cut as vLLM's tokenizer truncates: the start of the text, and EOS kept.
    assert posted(short, "/pooling")[-1]["input"] == [[*short.tokenize(long_text)[0][:5], 2]]


def test_left_truncation_is_refused_before_anything_is_sent(
    vllm: respx.MockRouter, embedder: FakeVLLM
) -> None:
    async def work(backend: RemoteBackend) -> None:
        before = len(embedder.requests)
        with pytest.raises(InvalidInput, match="Left is not available") as refused:
            await encode(backend, ["x"], Output.DENSE, options=EncodeOptions(truncate_left=True))
        assert refused.value.param == "truncation_direction"
        assert len(embedder.requests) == before

    with_backend(work, frozenset({Operation.EMBED}))


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault.status(503), Unavailable, "engine is currently busy"),
        (Fault.status(429, "rate limited"), Overloaded, "rate limited"),
        (Fault.status(500, "EngineCore encountered an issue"), BackendFailure, "HTTP 500"),
        (Fault.status(400, "bad thing"), InvalidInput, "bad thing"),
        (Fault.malformed(), BackendFailure, "malformed body"),
        (Fault.short(), BackendFailure, "9 results for 10 inputs"),
    ],
)
def test_vllms_errors_become_the_engines(
    vllm: respx.MockRouter,
    embedder: FakeVLLM,
    fault: Fault,
    error: type[Exception],
    message: str,
) -> None:
    async def work(backend: RemoteBackend) -> None:
        embedder.inject(fault, "/v1/embeddings", times=3)  # more than REMOTE_RETRIES
        with pytest.raises(error, match=message):
            await encode(backend, TEXTS, Output.DENSE)

    with_backend(work, frozenset({Operation.EMBED}))


def test_a_busy_engine_is_retried_then_answers(vllm: respx.MockRouter, embedder: FakeVLLM) -> None:
    async def work(backend: RemoteBackend) -> Encoding:
        embedder.inject(Fault.status(503, retry_after=0), "/v1/embeddings")
        return await encode(backend, TEXTS[:2], Output.DENSE)

    encoding = with_backend(work, frozenset({Operation.EMBED}))
    assert encoding.dense is not None and encoding.dense.shape == (2, 8)
    assert len(posted(embedder, "/v1/embeddings")) == 3  # the probe's, the refused, the retry


def test_an_instance_restarted_with_another_task_is_probed_again(
    vllm: respx.MockRouter, sparse: FakeVLLM
) -> None:
    async def work(backend: RemoteBackend) -> None:
        sparse.task = "token_embed"
        with pytest.raises(BackendFailure, match="no longer serves the pooling task"):
            await encode(backend, ["cats"], Output.LEXICAL)
        assert not backend.health().healthy
        sparse.task = "token_classify"
        for _ in range(100):
            if backend.health().healthy:
                break
            await asyncio.sleep(0.02)
        encoding = await encode(backend, ["cats"], Output.LEXICAL)
        assert encoding.lexical is not None

    with_backend(work, frozenset({Operation.LEXICAL_COLBERT}))


def test_bge_m3_without_a_pooler_task_cannot_serve_and_says_how_to_start_it() -> None:
    combined = FakeVLLM(task="embed&token_classify")
    with respx.mock(assert_all_called=False) as router:
        router.route(host="vllm-sparse").mock(side_effect=combined.respx_side_effect)
        with pytest.raises(StartupError) as failure:
            with_backend(lambda b: asyncio.sleep(0), frozenset({Operation.LEXICAL_COLBERT}))
    message = str(failure.value)
    assert "LEXICAL_COLBERT_BACKENDS: the remote backend cannot serve" in message
    assert "embed&token_classify" in message and "--pooler-config" in message


def test_a_plain_encoders_token_embed_is_not_bge_m3_colbert() -> None:
    # XLMRobertaModel without --hf-overrides: a row for every token, BOS included.
    plain = FakeVLLM(task="token_embed", architecture="XLMRobertaModel")
    with respx.mock(assert_all_called=False) as router:
        router.route(host="vllm-sparse").mock(side_effect=plain.respx_side_effect)
        with pytest.raises(StartupError, match="a vector for every token"):
            with_backend(lambda b: asyncio.sleep(0), frozenset({Operation.LEXICAL_COLBERT}))


def test_a_classifier_of_several_labels_is_no_reranker() -> None:
    classifier = FakeVLLM(
        task="classify", architecture="XLMRobertaForSequenceClassification", num_labels=3
    )
    with respx.mock(assert_all_called=False) as router:
        router.route(host="vllm-rerank").mock(side_effect=classifier.respx_side_effect)
        with pytest.raises(StartupError, match="classifies into 3 labels"):
            with_backend(lambda b: asyncio.sleep(0), frozenset({Operation.RERANK}))


def test_a_chain_asking_an_instance_for_another_task_stops_start_up(
    vllm: respx.MockRouter,
) -> None:
    with pytest.raises(StartupError) as failure:
        with_backend(
            lambda b: asyncio.sleep(0),
            frozenset({Operation.RERANK}),
            remote_rerank_url=EMBED_URL,
        )
    message = str(failure.value)
    assert "RERANK_BACKENDS: the remote backend cannot serve" in message
    assert "serves the pooling task embed" in message and "REMOTE_RERANK_URL" in message


def test_special_tokens_are_found_at_probe_time(vllm: respx.MockRouter, sparse: FakeVLLM) -> None:
    with_backend(lambda b: asyncio.sleep(0), frozenset({Operation.LEXICAL_COLBERT}))
    prompts = [(body["prompt"], body["add_special_tokens"]) for body in posted(sparse, "/tokenize")]
    # BOS and EOS: what an empty text gets; pad and unk: their text, tokenized.
    assert ("", True) in prompts and ("<pad><unk>", False) in prompts


def test_something_else_is_named_in_the_error() -> None:
    with respx.mock(assert_all_called=False) as router:
        router.route(host="vllm-embed").mock(return_value=httpx.Response(404))
        with pytest.raises(StartupError, match=r"vLLM \(GET /v1/models, /version\)"):
            with_backend(lambda b: asyncio.sleep(0), frozenset({Operation.EMBED}))
