"""``bge-serve``: read settings once, build the engine, serve it."""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Sequence

import uvicorn

from api.app import create_app
from api.download import download_main
from api.http_limits import ConnectionStats, guarded_protocol
from api.logs import configure_logging
from api.token_arrays import OFF, load_encoding
from backends import build_chains
from engine.errors import StartupError, Unavailable
from engine.inference import InferenceEngine
from engine.settings import Settings, load_settings

__all__ = ["freeze_loaded_heap", "main", "tune_process"]

log = logging.getLogger(__name__)

# Descriptors beyond the connections: model files, the log, Redis, remote backends.
_SPARE_FILES = 256


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["download"]:
        return download_main(args[1:])
    settings = load_settings(args)
    log_config = configure_logging(settings)
    for deprecated in settings.deprecations():
        log.warning("%s", deprecated)
    tune_process()
    try:
        # The port first: a taken port must not cost a model load to find out.
        listener = _listen(settings.host, settings.port)
        _check_token_encoding(settings)
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

    connections = ConnectionStats()
    app = create_app(
        settings,
        engine,
        on_start_failure=stop,
        on_loaded=freeze_loaded_heap,
        connections=connections,
    )
    _allow_open_files(settings.max_connections)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=log_config,
            http=guarded_protocol(settings, connections),
            timeout_keep_alive=settings.http_keepalive_s,
            # On SIGTERM uvicorn stops accepting, then waits this long for the requests
            # it has (queued ones included) before the lifespan stops the engine.
            timeout_graceful_shutdown=settings.shutdown_timeout_s,
        )
    )
    # uvicorn drains on SIGTERM and SIGINT alike, then re-raises the signal it drained on
    # with these handlers back in place (Server.capture_signals); the drain finished, so
    # that signal now ends the process cleanly (exit 0) instead of killing it by the
    # signal (SIGINT: with a KeyboardInterrupt traceback).
    for drained in (signal.SIGTERM, signal.SIGINT):
        signal.signal(drained, lambda *_: None)
    server.run(sockets=[listener])
    if failures:
        print(f"bge-serve: {failures[0]}", file=sys.stderr)
        return 1
    return 0


def _check_token_encoding(settings: Settings) -> None:
    """A tiktoken encoding that cannot load stops the start, not each token-array request."""
    if settings.openai_token_encoding == OFF:
        return
    try:
        load_encoding(settings.openai_token_encoding)
    except Unavailable as exc:
        raise StartupError(
            f"{exc.message}; name another, or set OPENAI_TOKEN_ENCODING=off to refuse token arrays"
        ) from exc


def tune_process() -> None:
    """Library defaults for a long-running server process; the environment may override."""
    # Tokenizers' own thread pool fights torch's for the same cores under a server.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # On a CPU, oneDNN (torch's bf16 matmuls) compiles a primitive per matrix shape and
    # caches this many. Off, a one-text bf16 pass took 17 ms instead of 6 (every matmul
    # compiled anew); on, with packed passes run at a bounded set of sizes
    # (backends.flag.packing.packed_size), the cache stops growing once those are
    # compiled. oneDNN's own default, set here so that the figure is stated; oneDNN reads
    # it when it creates its first primitive, after start-up.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")


def freeze_loaded_heap() -> None:
    """Moves what start-up allocated out of reach of Python's cyclic garbage collector.

    The models, tokenizers and imported modules (about 400,000 objects with one small
    model) live as long as the process, yet every full collection walked them: 190 ms
    with the event loop and the batcher stopped, the p99 of 32 clients sending one text
    each (300 ms against a p50 of 85). Frozen, a full collection walks only what requests
    allocate (p99 147 ms, and 10 % more texts/s; bench.load on 2 cores, bf16).
    """
    gc.collect()
    gc.freeze()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on accepted sockets whose
    # proto says TCP (base_events._set_nodelay). Without it every keep-alive answer, written
    # as head then body, waits out the client's delayed ACK: 40 ms on Linux.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise StartupError(
            f"cannot listen on {host}:{port} ({exc.strerror}); set PORT (--port) to a free "
            "port, or HOST (--host) to an address of this machine"
        ) from exc
    return listener


def _allow_open_files(max_connections: int) -> None:
    """Raise the soft open-file limit toward the hard one so MAX_CONNECTIONS can be met."""
    wanted = max_connections + _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "the open-file limit (%d) is below MAX_CONNECTIONS + %d; lower MAX_CONNECTIONS or "
            "raise ulimit -n",
            soft,
            _SPARE_FILES,
        )


if __name__ == "__main__":
    sys.exit(main())
