"""A Hugging Face hub on loopback, serving repositories from local folders.

It answers what ``huggingface_hub`` asks when it downloads: the model's file list
(``GET /api/models/{repo}``, ``…/revision/{rev}``; huggingface_hub 1+ ``…/tree/{rev}``)
and each file (``HEAD`` and ``GET
/{repo}/resolve/{rev}/{path}``, with ``X-Repo-Commit``, ``ETag``, ``Content-Length``,
and ``Range`` for resuming). ``cut`` breaks the first download of a file after a
number of bytes, as a dropped connection would.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

SHA = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Seen:
    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    repos: dict[str, Path]
    cut: dict[str, int] = field(default_factory=dict)  # file name -> bytes sent, once
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def fetched(self) -> set[str]:
        """The files whose content was asked for (GET on a resolve URL)."""
        return {
            s.path.split("/resolve/", 1)[1].split("/", 1)[1]
            for s in self.seen
            if s.method == "GET" and "/resolve/" in s.path
        }


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.seen.append(Seen(self.command, path, self.headers.get("Range")))
            if path.startswith("/api/models/"):
                parts = path.removeprefix("/api/models/").split("/")
                repo = "/".join(parts[:2])
                if repo not in hub.repos:
                    return self._send(404, b'{"error": "Repository not found"}', body)
                if parts[2:3] == ["tree"]:
                    # huggingface_hub 1+ lists files from the tree (one page here: the
                    # real hub pages by 1,000 with a Link header).
                    return self._send(200, json.dumps(self._tree(repo)).encode(), body)
                info = {
                    "id": repo,
                    "modelId": repo,
                    "sha": SHA,
                    "siblings": [{"rfilename": name} for name in hub.files(repo)],
                }
                return self._send(200, json.dumps(info).encode(), body)
            if "/resolve/" in path:
                repo, rest = path.lstrip("/").split("/resolve/", 1)
                name = rest.split("/", 1)[1]
                file = hub.repos.get(repo, Path("/nonexistent")) / name
                if not file.is_file():
                    return self._send(404, b'{"error": "Entry not found"}', body)
                return self._file(name, file.read_bytes(), body)
            return self._send(404, b"{}", body)

        def _tree(self, repo: str) -> list[dict[str, object]]:
            entries: list[dict[str, object]] = []
            for name in hub.files(repo):
                content = (hub.repos[repo] / name).read_bytes()
                # A git blob id, as the hub's "oid" of a file stored without LFS.
                blob = hashlib.sha1(  # noqa: S324 - git's object id, not security
                    b"blob %d\0" % len(content) + content
                ).hexdigest()
                entries.append({"type": "file", "path": name, "size": len(content), "oid": blob})
            return entries

        def _file(self, name: str, content: bytes, body: bool) -> None:
            start = 0
            requested = self.headers.get("Range")
            if requested and requested.startswith("bytes="):
                start = int(requested.removeprefix("bytes=").split("-", 1)[0])
            part = content[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("X-Repo-Commit", SHA)
            self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
            self.send_header("Content-Length", str(len(part)))
            if start:
                self.send_header(
                    "Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}"
                )
            self.end_headers()
            if not body:
                return
            limit = hub.cut.pop(name, None) if self.command == "GET" else None
            if limit is None:
                self.wfile.write(part)
                return
            self.wfile.write(part[:limit])
            self.wfile.flush()
            self.close_connection = True  # the rest never comes

        def _send(self, status: int, payload: bytes, body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

    return Handler


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
