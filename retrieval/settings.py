"""Where the tools find the service and the store, and how long they wait on the service:
flags, each with an environment variable as its default, read once per command and
passed down."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from qdrant_client import QdrantClient

from retrieval.client import DEFAULT_TIMEOUT_S, ServiceClient
from retrieval.command import InputError

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
_TIMEOUT_FLAG, _TIMEOUT_ENV = "--service-timeout", "BGE_TIMEOUT_S"
_MAX_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class Connections:
    service_url: str
    service_api_key: str | None
    qdrant_path: str
    qdrant_url: str | None
    qdrant_api_key: str | None
    service_timeout_s: float = DEFAULT_TIMEOUT_S

    def service(self, *, concurrency: int = 4) -> ServiceClient:
        return ServiceClient(
            self.service_url,
            api_key=self.service_api_key,
            timeout_s=self.service_timeout_s,
            concurrency=concurrency,
        )

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
    parser.add_argument(
        _TIMEOUT_FLAG,
        metavar=_TIMEOUT_ENV,
        type=_flag_seconds,
        default=None,
        help="Seconds one call to the service may take, retries and Retry-After waits "
        "included: a dead, hung or overloaded service is given up on after this "
        f"[env {_TIMEOUT_ENV}; default {DEFAULT_TIMEOUT_S:g}]",
    )


def connections(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Connections:
    env = os.environ if environ is None else environ
    values: dict[str, str | None] = {}
    for flag, name, default, _ in _FLAGS:
        field = flag.removeprefix("--").replace("-", "_")
        values[field] = getattr(args, field) or env.get(name) or default
    timeout_s = args.service_timeout
    if timeout_s is None:
        given = env.get(_TIMEOUT_ENV)
        timeout_s = DEFAULT_TIMEOUT_S if given is None else _seconds(given, _TIMEOUT_ENV)
    return Connections(
        service_url=str(values["service_url"]),
        service_api_key=values["service_api_key"],
        qdrant_path=str(values["qdrant_path"]),
        qdrant_url=values["qdrant_url"],
        qdrant_api_key=values["qdrant_api_key"],
        service_timeout_s=timeout_s,
    )


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= _MAX_TIMEOUT_S:  # NaN fails this too
        raise InputError(f"{name}: a number of seconds, more than 0 and at most 3600, not `{text}`")
    return value


def _flag_seconds(text: str) -> float:
    try:
        return _seconds(text, _TIMEOUT_FLAG)
    except InputError as exc:
        # argparse names the flag itself: "argument --service-timeout: <this>".
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{_TIMEOUT_FLAG}: ")) from None
