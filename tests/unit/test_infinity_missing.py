"""Where infinity_emb is not installed (the service's own environment), asking for the
infinity backend stops the start and says where it runs."""

from __future__ import annotations

import importlib.util

import pytest

from backends import build_chains
from engine.errors import StartupError
from engine.settings import load_settings


def test_the_infinity_backend_without_infinity_emb_names_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def without_infinity(name: str, *args: object) -> object:
        return None if name == "infinity_emb" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_infinity)
    settings = load_settings([], {"EMBED_BACKENDS": "infinity", "DEVICE": "cpu"})
    with pytest.raises(StartupError, match=r"constraints-infinity\.txt"):
        build_chains(settings)
