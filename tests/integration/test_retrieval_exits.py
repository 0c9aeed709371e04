"""How bge-index, bge-search and bge-eval end when the service is dead, hung or busy,
or the user presses Ctrl-C: a dead or hung service is given up on within the stated
deadline (``--service-timeout``, retries included), and SIGINT is one line and exit
status 130, never a traceback. The peers here are real sockets: a closed port, one that
accepts and never answers, and an HTTP server that answers 503 to everything."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from retrieval import evaluate, index, search
from retrieval.client import ServiceClient, ServiceError
from tests.conftest import free_port

# Well past every deadline under test: a client still waiting then never gave up.
OLD_GIVE_UP_S = 15.0


@dataclass
class Hung:
    """Accepts connections and never answers (a SIGSTOPped service looks like this)."""

    url: str
    accepted: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def hung() -> Iterator[Hung]:
    listener = socket.create_server(("127.0.0.1", 0))
    peer = Hung(f"http://127.0.0.1:{listener.getsockname()[1]}")
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            held.append(connection)
            peer.accepted.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield peer
    listener.close()
    for connection in held:
        connection.close()


@pytest.fixture
def busy() -> Iterator[str]:
    """Answers every request 503 with ``Retry-After: 0`` (a service that stays loading)."""

    class Busy(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = b'{"error": {"message": "busy", "type": "overloaded"}}'
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self._answer()

        do_GET = _answer  # noqa: N815 (the name http.server dispatches a GET to)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def embed_within(url: str, deadline_s: float) -> tuple[ServiceError, float]:
    async def call() -> None:
        async with ServiceClient(url, timeout_s=deadline_s) as service:
            await asyncio.wait_for(service.embed(["a text"]), OLD_GIVE_UP_S)

    began = time.monotonic()
    with pytest.raises(ServiceError) as raised:
        asyncio.run(call())
    return raised.value, time.monotonic() - began


def test_a_closed_port_is_given_up_on_within_the_deadline() -> None:
    # A service that died mid-run: connections refused, retried with backoff until the
    # deadline, not 8 times over ~100 s.
    error, took = embed_within(f"http://127.0.0.1:{free_port()}", 1.5)
    assert took < 1.5 + 2
    assert "gave up after 1.5 s" in str(error)
    assert "ConnectError" in str(error)


def test_a_hung_service_is_given_up_on_within_the_deadline(hung: Hung) -> None:
    error, took = embed_within(hung.url, 1.0)
    assert hung.accepted.is_set()
    assert took < 1 + 2  # the deadline, and slack for a loaded machine
    assert str(error) == (
        f"the service at {hung.url} did not answer /v1/hybrid-embeddings within 1 s "
        "(--service-timeout)"
    )


def test_a_service_that_stays_busy_is_given_up_on_within_the_deadline(busy: str) -> None:
    error, took = embed_within(busy, 1.0)
    assert took < 1 + 2  # the deadline, and slack for a loaded machine
    assert str(error) == (
        "/v1/hybrid-embeddings answered 503 until the 1 s deadline (--service-timeout): busy"
    )


def test_the_cli_gives_up_on_a_hung_service_after_the_stated_time(
    hung: Hung, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "one"}) + "\n")
    qdrant = ["--qdrant-path", str(tmp_path / "q")]
    began = time.monotonic()
    argv = [str(corpus), "--collection", "c", "--no-progress", "--service-url", hung.url]
    assert index.main([*argv, "--service-timeout", "1", *qdrant]) == 1
    assert time.monotonic() - began < 4
    assert capsys.readouterr().err.splitlines() == [
        f"bge-index: the service at {hung.url} did not answer /health within 1 s "
        "(--service-timeout)"
    ]
    # The same deadline from the environment, for bge-search too.
    monkeypatch.setenv("BGE_TIMEOUT_S", "0.5")
    began = time.monotonic()
    assert search.main(["q", "--collection", "c", "--service-url", hung.url, *qdrant]) == 1
    assert time.monotonic() - began < 4
    assert "did not answer /v1/hybrid-embeddings within 0.5 s" in capsys.readouterr().err


def test_a_bad_deadline_is_bad_input(capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exited:
        index.main(["c.jsonl", "--collection", "c", "--service-timeout", "soon"])
    assert exited.value.code == 2
    assert (
        "--service-timeout: a number of seconds, more than 0 and at most 3600, not `soon`"
        in capsys.readouterr().err
    )
    monkeypatch.setenv("BGE_TIMEOUT_S", "0")
    assert search.main(["q", "--collection", "c"]) == 2
    assert capsys.readouterr().err == (
        "bge-search: BGE_TIMEOUT_S: a number of seconds, more than 0 and at most 3600, not `0`\n"
    )


@pytest.mark.parametrize("tool", [index, search, evaluate])
def test_help_states_the_deadline(tool: Any, capsys: Any) -> None:
    with pytest.raises(SystemExit):
        tool.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--service-timeout BGE_TIMEOUT_S" in text
    assert "is given up on after this [env BGE_TIMEOUT_S; default 30]" in text
    assert "exit status: 0 done, 1" in text and "2 bad input" in text and "130 interrupted" in text


@pytest.mark.parametrize("tool", ["index", "search", "evaluate"])
def test_ctrl_c_is_one_line_and_exit_130(tool: str, hung: Hung, tmp_path: Path) -> None:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "a", "text": "one"}) + "\n")
    first = {
        "index": [str(folder / "corpus.jsonl"), "--collection", "c"],
        "search": ["a query", "--collection", "c"],
        "evaluate": [str(folder)],
    }[tool]
    command = [sys.executable, "-m", f"retrieval.{tool}", *first, "--service-url", hung.url]
    command += ["--qdrant-path", str(tmp_path / "q"), "--service-timeout", "60"]
    interrupted = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    # Once it is waiting on the service, as a user who gives up would press Ctrl-C.
    assert hung.accepted.wait(30), "the tool never asked the service"
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate(timeout=20)
    prog = {"index": "bge-index", "search": "bge-search", "evaluate": "bge-eval"}[tool]
    assert interrupted.returncode == 130, err
    assert err.splitlines() == [
        f"{prog}: interrupted"
        + (
            " (the batches stored so far stay: --resume goes on from them)"
            if tool == "index"
            else ""
        )
    ]
