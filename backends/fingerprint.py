"""What a model's answers depend on, as one string: the embedding cache keys by it, so two
services share entries exactly when their fingerprints are equal.

Equal answers here means equal up to the float rounding that already moves the last bits
of one service's vectors from one batch to the next. So a fingerprint covers:

- from a local folder (flag, infinity backends): the content of every file a backend
  loads from it — weights, bge-m3's sparse and ColBERT heads, config, tokenizer, and
  sentence-transformers' module configs (pooling, normalisation, ``max_seq_length``) —
  each by its name, size and SHA-256. Not the folder's path, nor its files' times:
  replicas that each downloaded the same model share entries, and a fine-tune written
  over the same folder or a copy that differs in one tensor does not. The whole file is
  hashed, not a sample: a fine-tune with frozen embeddings keeps the first and last
  megabytes of bge-m3's safetensors file as they were.
- the backend kind (flag and infinity compute the same vectors through other code) and
  the dtype (fp16 answers differ from fp32 ones by far more than rounding). Not the
  device: fp32 on a CPU and on a GPU agree to rounding.
- for a remote (no folder here): its URL without credentials or query string, the kind
  of service it is and its version, and the model as it reports it (name, dimension,
  token limit, vocabulary, pooling). A remote re-deployed with other weights under the
  same name, URL and version is not told apart.

The token limit and the request's options are in each entry's key besides
(``engine.cache.entry_key``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from engine.settings import Settings
from engine.types import ModelInfo

__all__ = ["folder_fingerprint", "keys_are_shared", "loaded_files", "remote_fingerprint"]

# What backends load from a folder (``backends.download`` fetches the same): configs and
# tokenizers (.json, .model, .txt), weights (.safetensors, .bin) and bge-m3's heads (.pt).
_LOADED_SUFFIXES = (".json", ".model", ".txt", ".safetensors", ".bin", ".pt")
_VERSION = "fingerprint-1"  # changed whenever what is hashed changes


def keys_are_shared(settings: Settings) -> bool:
    """Whether other processes read this one's cache entries (Redis): only then can an
    entry meet another model, so only then is a folder worth hashing at start-up. An
    in-process store holds the answers of the one folder this process loaded."""
    return settings.redis_url is not None


def loaded_files(folder: Path) -> list[Path]:
    """The files of ``folder`` a backend reads, sorted: its top level and
    sentence-transformers' numbered module folders (``1_Pooling/``, ``2_Normalize/``);
    not READMEs, ONNX exports or the hub's download metadata."""
    return sorted(_loaded(folder))


def _loaded(folder: Path) -> Iterator[Path]:
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        if path.is_file() and path.suffix in _LOADED_SUFFIXES:
            yield path
        elif path.is_dir() and path.name[:1].isdigit() and "_" in path.name:
            yield from (
                child
                for child in path.iterdir()
                if child.is_file() and child.suffix in _LOADED_SUFFIXES
            )


def folder_fingerprint(folder: Path, *, backend: str, dtype: str) -> str:
    """The fingerprint of the model in ``folder`` as ``backend`` computes it in ``dtype``.
    Reads every loaded file once (a start-up cost: about 1 GB/s)."""
    digest = hashlib.sha256(f"{_VERSION}\0{backend}\0{dtype}\0".encode())
    for path in loaded_files(folder):
        with path.open("rb") as file:
            content = hashlib.file_digest(file, "sha256").hexdigest()
        name = path.relative_to(folder).as_posix()
        digest.update(f"{name}\0{path.stat().st_size}\0{content}\0".encode())
    return digest.hexdigest()


def remote_fingerprint(url: str, kind: str, version: str, info: ModelInfo) -> str:
    """The fingerprint of the model a remote serves, from what it says of itself."""
    parsed = urlsplit(url)
    # Credentials and tokens in the query are not the model: rotating them keeps entries.
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port is not None else host
    where = urlunsplit((parsed.scheme, netloc, parsed.path.rstrip("/"), "", ""))
    fields = (
        _VERSION,
        "remote",
        where,
        kind,
        version,
        info.name,
        str(info.dimension),
        str(info.max_tokens),
        str(info.vocab_size),
        str(info.pooling),
    )
    return hashlib.sha256("\0".join(fields).encode()).hexdigest()
