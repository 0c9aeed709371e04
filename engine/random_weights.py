"""Folders whose weights are random (``make demo``, the tests' tiny models), so that a
service started on them says so instead of passing its vectors off as a model's."""

from __future__ import annotations

from pathlib import Path

from engine.settings import Settings

__all__ = ["MARKER", "random_weight_warnings"]

# A file the tiny-model builder leaves in a folder it writes for people (make demo).
MARKER = "RANDOM_WEIGHTS"


def random_weight_warnings(settings: Settings) -> tuple[str, ...]:
    """One warning per configured model folder that carries the marker."""
    configured = {
        "EMBEDDING_MODEL_NAME": settings.embedding_model_name,
        "RERANKER_MODEL_NAME": settings.reranker_model_name,
    }
    return tuple(
        f"{setting}: the weights are random (a demo model built offline): its vectors and "
        "scores mean nothing; point it at a real model folder or hub id"
        for setting, name in configured.items()
        if (Path(name).expanduser() / MARKER).is_file()
    )
