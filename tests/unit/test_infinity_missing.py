"""Where infinity_emb is not installed (the service's own environment), the infinity
backend's load fails saying where it runs; building the chains still works (nothing is
imported before the load)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from backends import build_chains
from engine.errors import StartupError
from engine.settings import load_settings
from engine.types import Operation


def test_the_infinity_backend_without_infinity_emb_names_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def without_infinity(name: str, *args: object) -> object:
        return None if name == "infinity_emb" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_infinity)
    settings = load_settings([], {"EMBED_BACKENDS": "infinity", "DEVICE": "cpu"})
    (infinity,) = [b for b in build_chains(settings)[Operation.EMBED] if b.name == "infinity"]
    with pytest.raises(StartupError, match=r"constraints-infinity\.txt"):
        asyncio.run(infinity.start())
