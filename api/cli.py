"""``bge-serve``: read settings once, build the engine, serve it."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import uvicorn

from api.app import create_app
from api.download import download_main
from backends import build_chains
from engine.errors import StartupError
from engine.inference import InferenceEngine
from engine.settings import load_settings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["download"]:
        return download_main(args[1:])
    settings = load_settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every remote call at INFO with its URL: noise, and a URL may carry credentials.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Tokenizers' own thread pool fights torch's for the same cores under a server.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        engine = InferenceEngine(settings, build_chains(settings))
    except StartupError as exc:
        print(f"bge-serve: {exc}", file=sys.stderr)
        return 2

    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop(exc: BaseException) -> None:
        failures.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, engine, on_start_failure=stop)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=10,
        )
    )
    server.run()
    if failures:
        print(f"bge-serve: {failures[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
