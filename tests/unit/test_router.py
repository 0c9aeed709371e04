"""Chains: start-up validation, fall-through, circuit breaking."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from backends import build_chains
from engine import (
    BackendFailure,
    BackendHealth,
    Capabilities,
    InvalidInput,
    ModelInfo,
    Operation,
    Output,
    Overloaded,
    Settings,
    StartupError,
)
from engine.router import Router


class Stub:
    def __init__(self, name: str, ops: set[Operation], behaviour: Callable[[], object]) -> None:
        self._name = name
        self._ops = frozenset(ops)
        self.behaviour = behaviour
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(self._ops, frozenset({Output.DENSE}), "m", "r", 10)

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    def health(self) -> BackendHealth:
        return BackendHealth(loaded=True, healthy=True, device="cpu")

    def model_info(self, operation: Operation) -> ModelInfo:
        return ModelInfo("m", 8, 10, 4)

    async def work(self) -> object:
        self.calls += 1
        return self.behaviour()

    async def encode(self, texts: Sequence[str], outputs: frozenset[Output]) -> object:
        return await self.work()

    async def score(self, query: str, documents: Sequence[str]) -> object:
        return await self.work()

    async def token_ids(self, texts: Sequence[str]) -> tuple[list[int], ...]:
        return ()


def raise_(exc: Exception) -> Callable[[], object]:
    def behaviour() -> object:
        raise exc

    return behaviour


def call(router: Router, op: Operation = Operation.EMBED) -> object:
    return asyncio.run(router.call(op, lambda b: b.encode(["x"], frozenset({Output.DENSE}))))  # type: ignore[attr-defined,no-any-return]


def test_incapable_backend_is_a_startup_error_naming_the_operation() -> None:
    dense_only = Stub("infinity", {Operation.EMBED}, lambda: "ok")
    with pytest.raises(StartupError, match=r"LEXICAL_COLBERT_BACKENDS.*infinity.*sparse"):
        Router({Operation.LEXICAL_COLBERT: [dense_only]})  # type: ignore[list-item]


def test_infinity_in_the_sparse_chain_fails_at_start_up() -> None:
    from engine.inference import InferenceEngine

    settings = Settings(lexical_colbert_backends=("infinity",), device="cpu")
    with pytest.raises(
        StartupError, match="LEXICAL_COLBERT_BACKENDS: the infinity backend cannot serve"
    ):
        InferenceEngine(settings, build_chains(settings))


def test_each_backend_loads_only_what_its_chains_need() -> None:
    settings = Settings(
        embed_backends=("infinity", "flag"),
        lexical_colbert_backends=("flag",),
        rerank_backends=("flag",),
        device="cpu",
    )
    chains = build_chains(settings)
    infinity, flag = chains[Operation.EMBED]
    assert infinity.name == "infinity"
    assert infinity.capabilities.operations == {Operation.EMBED}
    assert infinity.capabilities.reranker_model is None  # dense only: no reranker loaded
    assert flag.capabilities.operations == set(Operation)
    assert chains[Operation.RERANK] == [flag]


def test_transient_refusal_falls_through_to_the_next_backend() -> None:
    first = Stub("a", {Operation.EMBED}, raise_(Overloaded("busy")))
    second = Stub("b", {Operation.EMBED}, lambda: "from b")
    router = Router({Operation.EMBED: [first, second]})  # type: ignore[list-item]
    assert call(router) == "from b"
    assert router.serving(Operation.EMBED) == "a"  # overload is not ill health


def test_request_faults_do_not_fall_through() -> None:
    first = Stub("a", {Operation.EMBED}, raise_(InvalidInput("bad", param="input")))
    second = Stub("b", {Operation.EMBED}, lambda: "from b")
    router = Router({Operation.EMBED: [first, second]})  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        call(router)
    assert second.calls == 0


def test_breaker_opens_after_repeated_failures_and_probes_after_cooldown() -> None:
    now = [0.0]
    flaky = Stub("a", {Operation.EMBED}, raise_(RuntimeError("internal")))
    backup = Stub("b", {Operation.EMBED}, lambda: "from b")
    router = Router(
        {Operation.EMBED: [flaky, backup]},  # type: ignore[list-item]
        breaker_threshold=3,
        breaker_cooldown_s=10,
        clock=lambda: now[0],
    )
    for _ in range(3):
        assert call(router) == "from b"
    assert router.breaker_open("a")
    assert router.serving(Operation.EMBED) == "b"
    call(router)
    assert flaky.calls == 3  # skipped while open
    now[0] = 11.0
    flaky.behaviour = lambda: "a is back"
    assert call(router) == "a is back"
    assert not router.breaker_open("a")


def test_last_error_surfaces_when_every_backend_fails() -> None:
    only = Stub("a", {Operation.EMBED}, raise_(RuntimeError("secret detail")))
    router = Router({Operation.EMBED: [only]})  # type: ignore[list-item]
    with pytest.raises(BackendFailure) as info:
        call(router)
    assert "secret detail" not in info.value.message
