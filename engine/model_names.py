"""The names clients call the models by, never the folders they were loaded from.

A container mounts its models from folders (``EMBEDDING_MODEL_NAME=/models/bge-m3``),
but its clients were written against hub ids (``model="BAAI/bge-m3"``); a response
that names a path leaks the host's layout and breaks a client that compares names.

``config.json``'s ``_name_or_path`` is never read: it records where a checkpoint came
from, not what it is (the published bge-reranker-v2-m3 records ``BAAI/bge-m3``, the model
it was tuned from; all-MiniLM-L6-v2 records ``nreimers/MiniLM-L6-H384-uncased``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelNotFound, StartupError
from engine.settings import Settings

__all__ = ["ModelNames", "PublicName", "public_name"]

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# The Hugging Face cache keeps a snapshot at .../models--ORG--NAME/snapshots/<revision>.
_CACHE_PREFIX = "models--"
# The names BAAI publishes its BGE models under: bge-m3, bge-reranker-v2-m3,
# bge-large-en-v1.5, bge-small-zh, bge-multilingual-gemma2, bge-en-icl, ...
_BAAI_FOLDER = re.compile(
    r"^bge-(m3|reranker|small|base|large|multilingual|en-icl|visualized)([\w.-]*)$", re.IGNORECASE
)
# Echoed back in a 404: a client that sends a 200 KB name does not get it back in full.
_SHOWN_CHARS = 80


@dataclass(frozen=True, slots=True)
class PublicName:
    name: str
    source: str  # how it was chosen, for the start-up log


def public_name(configured: str, override: str | None, setting: str) -> PublicName:
    """``override``; else the hub id ``configured`` is; else the repo of the Hugging Face
    cache snapshot it names; else the folder's own name as configured (``BAAI/`` before a
    BGE model's name), not the name of a symlink's target."""
    if override:
        return PublicName(override, setting.replace("_MODEL_NAME", "_SERVED_NAME"))
    folder = Path(os.path.abspath(Path(configured).expanduser()))
    if not folder.is_dir():
        return PublicName(configured, f"{setting} is a hub id")
    for part in (folder, *folder.parents):
        if part.name.startswith(_CACHE_PREFIX):
            repo = part.name.removeprefix(_CACHE_PREFIX).split("--")
            if len(repo) == 2 and all(repo):
                return PublicName("/".join(repo), "the Hugging Face cache snapshot's repo")
    if _BAAI_FOLDER.match(folder.name):
        return PublicName(f"BAAI/{folder.name}", "the folder's name, a BAAI model's")
    return PublicName(folder.name, "the folder's name")


@dataclass(frozen=True, slots=True)
class ModelNames:
    embedding: str
    reranker: str
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, embeds: bool = True, reranks: bool = True
    ) -> ModelNames:
        """The public names of the models ``embeds`` and ``reranks`` say are served, each
        logged with how it was chosen; two that would share a name are a StartupError."""
        embedding = public_name(
            settings.embedding_model_name, settings.embedding_served_name, "EMBEDDING_MODEL_NAME"
        )
        reranker = public_name(
            settings.reranker_model_name, settings.reranker_served_name, "RERANKER_MODEL_NAME"
        )
        served = [(embedding, "EMBEDDING")] * embeds + [(reranker, "RERANKER")] * reranks
        for name, prefix in served:
            log.info(
                "%s model served as `%s` (%s); set %s_SERVED_NAME to name it otherwise",
                prefix.lower(),
                name.name,
                name.source,
                prefix,
            )
        if embeds and reranks and embedding.name == reranker.name:
            raise StartupError(
                f"the embedding model and the reranker would both be served as "
                f"`{embedding.name}` (embedding: {embedding.source}; reranker: "
                f"{reranker.source}); a client could not tell them apart: set "
                "EMBEDDING_SERVED_NAME or RERANKER_SERVED_NAME"
            )
        return cls(embedding=embedding.name, reranker=reranker.name, aliases=settings.model_aliases)

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
