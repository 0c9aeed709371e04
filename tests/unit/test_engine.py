"""Engine logic against an in-memory backend: validation, finishing, routing state."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from engine import (
    BackendFailure,
    InferenceEngine,
    InputTooLarge,
    InvalidInput,
    ModelNotFound,
    Operation,
    Scores,
    Settings,
    StartupError,
    Unavailable,
)
from tests.fake_backend import DIM, FakeBackend


def make_engine(backend: FakeBackend | None = None, **settings: object) -> InferenceEngine:
    fake = backend or FakeBackend()
    config = Settings(max_batch_size=4, max_text_chars=50, **settings)  # type: ignore[arg-type]
    return InferenceEngine(config, {op: [fake] for op in Operation})


def run(engine: InferenceEngine) -> InferenceEngine:
    asyncio.run(engine.start())
    return engine


@pytest.mark.parametrize(
    ("texts", "error", "param"),
    [
        ([], InvalidInput, "input"),
        (["ok", ""], InvalidInput, "input[1]"),
        (["ok", " \n\t "], InvalidInput, "input[1]"),
        (["a"] * 5, InputTooLarge, "input"),
        (["ok", "y" * 51], InputTooLarge, "input[1]"),
    ],
)
def test_bad_texts_are_refused_before_the_backend(
    texts: list[str], error: type[Exception], param: str
) -> None:
    fake = FakeBackend()
    engine = run(make_engine(fake))
    with pytest.raises(error) as info:
        asyncio.run(engine.embed_dense(texts))
    assert getattr(info.value, "param", None) == param
    assert param.split("[")[0] in str(info.value)
    assert fake.calls == 0


def test_dimensions_truncate_then_renormalize() -> None:
    engine = run(make_engine())
    full, _ = asyncio.run(engine.embed_dense(["one two"]))
    short, tokens = asyncio.run(engine.embed_dense(["one two"], dimensions=3))
    assert short.shape == (1, 3)
    np.testing.assert_allclose(short[0], full[0, :3] / np.linalg.norm(full[0, :3]), rtol=1e-6)
    assert np.linalg.norm(short[0]) == pytest.approx(1.0)
    assert tokens == 4
    with pytest.raises(InvalidInput, match="dimensions"):
        asyncio.run(engine.embed_dense(["x"], dimensions=DIM + 1))


def test_sparse_is_mapped_once_by_the_engine() -> None:
    engine = run(make_engine(sparse_token_mapping="tokenizer"))
    vectors, _ = asyncio.run(engine.embed_sparse(["abc", "a"]))
    assert vectors[0].indices.tolist() == [3, 7]
    assert vectors[1].indices.tolist() == [1, 7]
    assert engine.sparse_index_space() == 100  # the vocabulary, for the tokenizer mapping


def test_rerank_sorts_applies_top_n_and_sigmoid() -> None:
    engine = run(make_engine())
    ranking = asyncio.run(engine.rerank("q", ["m", "z", "a", "n"], top_n=3))
    assert [r.index for r in ranking.results] == [1, 3, 0]
    assert [r.logit for r in ranking.results] == [13.0, 1.0, 0.0]
    for r in ranking.results:
        assert r.score == pytest.approx(1 / (1 + np.exp(-r.logit)))
    assert ranking.prompt_tokens == 12  # every document is scored, even those cut by top_n


def test_rerank_ties_keep_input_order_and_top_n_above_count_returns_all() -> None:
    engine = run(make_engine())
    ranking = asyncio.run(engine.rerank("q", ["b1", "b2", "b3"], top_n=10))
    assert [r.index for r in ranking.results] == [0, 1, 2]


@pytest.mark.parametrize(
    ("query", "documents", "top_n", "param"),
    [("", ["a"], None, "query"), ("q", [], None, "documents"), ("q", ["a"], 0, "top_n")],
)
def test_rerank_bad_input(query: str, documents: list[str], top_n: int | None, param: str) -> None:
    engine = run(make_engine())
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.rerank(query, documents, top_n=top_n))
    assert info.value.param == param


def test_requests_before_load_are_unavailable_with_retry() -> None:
    engine = make_engine()
    assert engine.health().status == "loading"
    with pytest.raises(Unavailable) as info:
        asyncio.run(engine.embed_dense(["x"]))
    assert info.value.retry_after is not None
    run(engine)
    assert engine.health().status == "ok"


def test_backend_crash_is_a_backend_failure_without_internals() -> None:
    engine = run(make_engine(FakeBackend(fail=True)))
    with pytest.raises(BackendFailure) as info:
        asyncio.run(engine.embed_dense(["x"]))
    assert "internal detail" not in info.value.message
    assert "fake" in info.value.message


def test_embedding_size_mismatch_is_a_startup_error() -> None:
    engine = make_engine(embedding_size=DIM + 1)
    with pytest.raises(StartupError, match="EMBEDDING_SIZE"):
        asyncio.run(engine.start())
    assert engine.health().status == "degraded"


def test_model_names_accept_full_name_and_basename_only() -> None:
    engine = run(make_engine(embedding_model_name="BAAI/bge-m3"))
    assert engine.served_model(Operation.EMBED, None) == "BAAI/bge-m3"
    assert engine.served_model(Operation.EMBED, "bge-m3") == "BAAI/bge-m3"
    with pytest.raises(ModelNotFound) as info:
        engine.served_model(Operation.EMBED, "text-embedding-3-small")
    assert info.value.param == "model"


def test_a_rerank_that_names_the_embedding_model_ranks_by_bge_m3() -> None:
    engine = run(make_engine(embedding_model_name="BAAI/bge-m3", model_aliases=("shared",)))
    reranker = engine.model_name(Operation.RERANK)
    assert engine.ranker(None) == (reranker, Operation.RERANK)
    assert engine.ranker(reranker) == (reranker, Operation.RERANK)
    assert engine.ranker("bge-m3") == ("BAAI/bge-m3", Operation.LEXICAL_COLBERT)
    # An alias both models answer to stays the reranker's, as before.
    assert engine.ranker("shared") == (reranker, Operation.RERANK)
    with pytest.raises(ModelNotFound):
        engine.ranker("text-embedding-3-small")


def test_ranking_by_bge_m3_needs_its_sparse_and_colbert_heads() -> None:
    config = Settings(embedding_model_name="BAAI/bge-m3")
    fake = FakeBackend()
    chains = {op: [fake] for op in Operation if op is not Operation.LEXICAL_COLBERT}
    engine = run(InferenceEngine(config, chains))
    with pytest.raises(Unavailable, match="lexical_colbert"):
        engine.ranker("BAAI/bge-m3")


def test_truncate_off_refuses_texts_over_the_token_limit() -> None:
    engine = run(make_engine(truncate=False))
    words = " ".join(["w"] * 15)  # 17 tokens with specials; the fake limit is 16
    with pytest.raises(InputTooLarge) as info:
        asyncio.run(engine.embed_dense(["fine", words]))
    assert info.value.param == "input[1]"
    assert "TRUNCATE" in info.value.message


def test_a_requests_truncate_overrides_the_setting() -> None:
    words = " ".join(["w"] * 15)
    lenient = run(make_engine(truncate=False))
    asyncio.run(lenient.embed_dense([words], truncate=True))
    strict = run(make_engine(truncate=True))
    with pytest.raises(InputTooLarge):
        asyncio.run(strict.embed_dense([words], truncate=False))


class CountingBackend(FakeBackend):
    """Records each score call's query and the most calls in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def score(self, query: str, documents: Sequence[str]) -> Scores:
        self.queries.append(query)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        return await super().score(query, documents)


def test_pairs_are_scored_in_input_order_one_call_per_query() -> None:
    backend = CountingBackend()
    engine = run(make_engine(backend))
    pairs = [("q1", "apple"), ("q2", "zebra"), ("q1", "mango"), ("q2", "kiwi")]
    scores = asyncio.run(engine.score_pairs(pairs))
    expected = [float(ord(passage[0]) - ord("m")) for _, passage in pairs]
    assert scores.logits.tolist() == expected
    assert sorted(backend.queries) == ["q1", "q2"]


def test_many_distinct_queries_do_not_flood_the_backend() -> None:
    backend = CountingBackend()
    engine = InferenceEngine(Settings(), {op: [backend] for op in Operation})
    asyncio.run(engine.start())
    asyncio.run(engine.score_pairs([(f"q{i}", "apple") for i in range(100)]))
    assert len(backend.queries) == 100
    assert 1 < backend.most_in_flight <= 16


@pytest.mark.parametrize(
    ("pairs", "field", "param"),
    [
        ([("q", " ")], "pairs", "pairs[0].passage"),
        ([("q", "p"), ("", "p")], "pairs", "pairs[1].query"),
        ([("q", "")], None, "passage"),
        ([], "inputs", "inputs"),
    ],
)
def test_bad_pairs_name_the_field(
    pairs: list[tuple[str, str]], field: str | None, param: str
) -> None:
    engine = run(make_engine())
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.score_pairs(pairs, field=field))
    assert info.value.param == param
