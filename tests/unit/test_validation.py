"""The engine's validation and readiness, asked directly: what a model could read, which
options a request departs on, and why a call is refused before any backend sees it."""

from __future__ import annotations

import dataclasses

import pytest

from engine import Capabilities, InvalidInput, ModelInfo, Operation, Settings, Unavailable
from engine.budget import Budget
from engine.health import Readiness
from engine.router import Router
from engine.types import DEFAULT_OPTIONS, EncodeOptions
from engine.validation import Validator, departures, refusal, tokenizer_operation, visible
from tests.fake_backend import FakeBackend


@pytest.mark.parametrize(
    ("text", "readable"),
    [
        ("a", True),
        (" \u00e9 ", True),
        ("", False),
        (" \n\t", False),
        ("\u200b", False),  # zero-width space: a format character
        ("\x00\ufeff", False),  # NUL and a byte-order mark
    ],
)
def test_visible_is_whether_a_model_could_read_the_text(text: str, readable: bool) -> None:
    assert visible(text) is readable


def test_departures_are_the_options_off_their_defaults() -> None:
    assert departures(DEFAULT_OPTIONS) == frozenset()
    assert departures(EncodeOptions(normalize=False)) == {"normalize"}
    both = EncodeOptions(normalize=False, truncate_left=True)
    assert departures(both) == {"normalize", "truncate_left"}


def test_a_refusal_names_each_missing_option_by_the_backends_reason() -> None:
    class Partial(FakeBackend):
        @property
        def capabilities(self) -> Capabilities:
            return dataclasses.replace(
                super().capabilities,
                options=frozenset({"normalize"}),
                refusals={"truncate_left": "it cuts the end"},
            )

    backend = Partial()
    wanted = frozenset({"normalize", "truncate_left"})
    assert refusal(backend, wanted) == "it cuts the end"  # type: ignore[arg-type]
    assert refusal(FakeBackend(), wanted) == (  # type: ignore[arg-type]
        "normalize not supported; truncate_left not supported"
    )


def test_the_tokenizer_is_the_embedding_chains_else_the_sparse_ones() -> None:
    assert tokenizer_operation(frozenset(Operation)) is Operation.EMBED
    sparse_only = frozenset({Operation.LEXICAL_COLBERT, Operation.RERANK})
    assert tokenizer_operation(sparse_only) is Operation.LEXICAL_COLBERT


def test_dimensions_must_lie_between_one_and_the_models() -> None:
    router = Router({Operation.EMBED: [FakeBackend()]})  # type: ignore[list-item]
    settings = Settings()
    checks = Validator(settings, router, Budget.from_settings(settings))
    info = ModelInfo(name="m", max_tokens=16, vocab_size=100, dimension=8)
    checks.dimensions(info, 1)
    checks.dimensions(info, 8)
    for wrong in (0, 9):
        with pytest.raises(InvalidInput) as refused:
            checks.dimensions(info, wrong)
        assert refused.value.param == "dimensions"
        assert "between 1 and 8" in refused.value.message


def test_readiness_refuses_until_started_then_says_why_a_start_failed() -> None:
    router = Router({Operation.EMBED: [FakeBackend()]})  # type: ignore[list-item]
    readiness = Readiness(router)
    with pytest.raises(Unavailable) as loading:
        readiness.check(Operation.EMBED)
    assert loading.value.retry_after is not None
    with pytest.raises(Unavailable, match="not served"):
        readiness.check(Operation.RERANK)
    readiness.failed(RuntimeError("no weights in /models/x"), debugging=False)
    with pytest.raises(Unavailable, match="failed to load") as failed:
        readiness.check(Operation.EMBED)
    assert "/models/x" not in failed.value.message  # the server's layout stays private
    assert readiness.health().status == "degraded"
