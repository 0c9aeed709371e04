"""Where the tools find the service and the store: flags, each with an environment
variable as its default, read once per command and passed down."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from qdrant_client import QdrantClient

__all__ = ["Connections", "add_connection_flags", "connections"]

_FLAGS = (
    ("--service-url", "BGE_URL", "http://localhost:8011", "The bge-serve that embeds and reranks."),
    ("--service-api-key", "BGE_API_KEY", None, "Its API key, if it has API_KEY set."),
    (
        "--qdrant-path",
        "QDRANT_PATH",
        "qdrant_data",
        "Folder of the embedded Qdrant (local mode; one process at a time).",
    ),
    ("--qdrant-url", "QDRANT_URL", None, "A Qdrant server or cluster instead (http://host:6333)."),
    ("--qdrant-api-key", "QDRANT_API_KEY", None, "Its API key."),
)


@dataclass(frozen=True, slots=True)
class Connections:
    service_url: str
    service_api_key: str | None
    qdrant_path: str
    qdrant_url: str | None
    qdrant_api_key: str | None

    def qdrant(self) -> QdrantClient:
        if self.qdrant_url:
            return QdrantClient(url=self.qdrant_url, api_key=self.qdrant_api_key, timeout=60)
        return QdrantClient(path=self.qdrant_path)

    def where(self) -> str:
        return self.qdrant_url or f"local Qdrant in {self.qdrant_path}/"


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    for flag, env, default, what in _FLAGS:
        parser.add_argument(
            flag, metavar=env, default=None, help=f"{what} [env {env}; default {default}]"
        )


def connections(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Connections:
    env = os.environ if environ is None else environ
    values: dict[str, str | None] = {}
    for flag, name, default, _ in _FLAGS:
        field = flag.removeprefix("--").replace("-", "_")
        values[field] = getattr(args, field) or env.get(name) or default
    return Connections(
        service_url=str(values["service_url"]),
        service_api_key=values["service_api_key"],
        qdrant_path=str(values["qdrant_path"]),
        qdrant_url=values["qdrant_url"],
        qdrant_api_key=values["qdrant_api_key"],
    )
