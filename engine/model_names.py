"""The names clients call the models by, never the folders they were loaded from.

A container mounts its models from folders (``EMBEDDING_MODEL_NAME=/models/bge-m3``),
but its clients were written against hub ids (``model="BAAI/bge-m3"``); a response
that names a path leaks the host's layout and breaks a client that compares names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelNotFound
from engine.settings import Settings

__all__ = ["ModelNames", "served_name"]

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# The Hugging Face cache keeps a snapshot at .../models--ORG--NAME/snapshots/<revision>.
_CACHE_PREFIX = "models--"
# Echoed back in a 404: a client that sends a 200 KB name does not get it back in full.
_SHOWN_CHARS = 80


def served_name(configured: str, override: str | None) -> str:
    """``override``; else the hub id ``configured`` is, or the one its folder records;
    else ``BAAI/<folder name>``."""
    if override:
        return override
    folder = Path(configured).expanduser()
    if not folder.is_dir():
        return configured  # a hub id: the backends fetch it by that name
    return _recorded_hub_id(folder) or f"BAAI/{folder.resolve().name}"


def _recorded_hub_id(folder: Path) -> str | None:
    resolved = folder.resolve()
    for part in (resolved, *resolved.parents):
        if part.name.startswith(_CACHE_PREFIX):
            repo = part.name.removeprefix(_CACHE_PREFIX).split("--")
            if len(repo) == 2 and all(repo):
                return "/".join(repo)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # transformers records where a model came from; a path there says nothing.
    recorded = config.get("_name_or_path") if isinstance(config, dict) else None
    if isinstance(recorded, str) and _HUB_ID.match(recorded) and not Path(recorded).exists():
        return recorded
    return None


@dataclass(frozen=True, slots=True)
class ModelNames:
    embedding: str
    reranker: str
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelNames:
        return cls(
            embedding=served_name(settings.embedding_model_name, settings.embedding_served_name),
            reranker=served_name(settings.reranker_model_name, settings.reranker_served_name),
            aliases=settings.model_aliases,
        )

    def accepted(self, served: str) -> tuple[str, ...]:
        """What a request's ``model`` may say to mean ``served``: the name, its last
        segment (``bge-m3`` for ``BAAI/bge-m3``), or an alias."""
        return tuple(dict.fromkeys((served, served.rsplit("/", 1)[-1], *self.aliases)))

    def check(self, served: str, requested: str | None, what: str) -> str:
        """``served`` when ``requested`` is empty or one of its accepted names; else 404."""
        accepted = self.accepted(served)
        if not requested or requested in accepted:
            return served
        shown = requested if len(requested) <= _SHOWN_CHARS else requested[:_SHOWN_CHARS] + "…"
        names = ", ".join(f"`{name}`" for name in accepted)
        raise ModelNotFound(
            f"model `{shown}` is not served here; {what} answers to {names}", param="model"
        )
