"""Peak RSS of bge-serve under the default request budgets (docs/benchmarks.md, Request budgets).

    .venv/bin/python -m bench.budget_memory embeddings|colbert|tokenize

One ``bge-serve`` with the defaults (``MAX_BATCH_SIZE=2048``, cache off) on tiny
random-weight models: the 512-token one for ``embeddings`` (2,048 texts of 31k
characters, 63.5 MB), the bge-m3-shaped 8,192-token one for ``colbert``
(``/embed_all`` of 1,480 texts of 512 tokens: an answer at MAX_RESPONSE_BYTES) and
``tokenize`` (2,048 texts of 8k characters, 16.4 MB). Two seconds into the large
request, a one-text ``/v1/embeddings`` request is timed. Prints one JSON line: the
server's VmHWM / VmRSS (MB, from /proc/PID/status) before and after, the large
request's status, answer size and time, and the one-text request's time.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ModelDirs, Server, start_server, stop_server
from tests.fixtures.long_models import build_long_m3
from tests.fixtures.tiny_models import build_m3, build_reranker, corpus

_DEFAULTS = {
    "MAX_BATCH_SIZE": "2048",
    "MAX_TEXT_CHARS": "100000",
    "MAX_REQUEST_BYTES": str(64 * 1024 * 1024),
    "CACHE_MAX_ITEMS": "0",
}


def _memory(server: Server) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0]) // 1024
    return found


def main() -> None:
    case = sys.argv[1] if len(sys.argv) > 1 else "embeddings"
    root = Path(tempfile.mkdtemp(prefix="budget-memory-"))
    reranker = build_reranker(root / "bge-reranker-v2-m3")
    build = build_m3 if case == "embeddings" else build_long_m3
    m3 = build(root / "bge-m3")
    words = " ".join(corpus(6000, seed=3)) * 3
    if case == "embeddings":
        route, body = (
            "/v1/embeddings",
            {"input": [words[i * 7 : i * 7 + 31_000] for i in range(2048)]},
        )
    elif case == "colbert":
        route, body = "/embed_all", {"inputs": [words[i * 7 : i * 7 + 760] for i in range(1480)]}
    else:
        route, body = "/tokenize", {"inputs": [words[i * 7 : i * 7 + 8000] for i in range(2048)]}
    raw = json.dumps(body).encode()
    server = start_server(ModelDirs(m3=m3, reranker=reranker), _DEFAULTS)
    out: dict[str, Any] = {
        "case": case,
        "body_mb": round(len(raw) / 1e6, 1),
        "start": _memory(server),
    }
    large: dict[str, Any] = {}

    def send() -> None:
        began = time.monotonic()
        answer = httpx.post(
            server.url + route,
            content=raw,
            headers={"content-type": "application/json"},
            timeout=900,
        )
        large.update(
            status=answer.status_code,
            answer_mb=round(len(answer.content) / 1e6, 1),
            s=round(time.monotonic() - began, 1),
            error=answer.text[:300] if answer.status_code != 200 else None,
        )

    try:
        thread = threading.Thread(target=send)
        thread.start()
        time.sleep(2)
        began = time.monotonic()
        httpx.post(server.url + "/v1/embeddings", json={"input": ["hello world"]}, timeout=900)
        out["one_text_s"] = round(time.monotonic() - began, 2)
        thread.join()
        out.update(large=large, end=_memory(server))
    finally:
        stop_server(server)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
