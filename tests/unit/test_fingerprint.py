"""A model's cache fingerprint follows what its answers depend on: the content of the files
a backend loads, the backend kind and dtype; for a remote what it says of itself."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from backends.fingerprint import (
    folder_fingerprint,
    keys_are_shared,
    loaded_files,
    remote_fingerprint,
)
from engine.settings import Settings
from engine.types import ModelInfo, Operation
from tests.fixtures.tiny_models import build_m3
from tests.unit.test_remote_backend import INFINITY, MODELS, infinity_backend

MB = 1 << 20


def model_folder(path: Path) -> Path:
    """A folder laid out as the hub's: weights larger than a first and a last megabyte,
    besides files no backend reads."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "xlm-roberta"}')
    (path / "tokenizer.json").write_text('{"model": "unigram"}')
    (path / "model.safetensors").write_bytes(bytes(range(256)) * (12 * MB // 256))
    (path / "colbert_linear.pt").write_bytes(b"colbert head")
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    (path / "README.md").write_text("# a model card")
    (path / "onnx").mkdir()
    (path / "onnx" / "model.onnx").write_bytes(b"an export no backend loads")
    (path / ".cache").mkdir()
    (path / ".cache" / "download.metadata").write_text("fetched at 12:00")
    return path


def fingerprint(folder: Path, backend: str = "flag", dtype: str = "torch.float32") -> str:
    return folder_fingerprint(folder, backend=backend, dtype=dtype)


def test_a_copy_elsewhere_with_other_times_has_the_same_fingerprint(tmp_path: Path) -> None:
    original = model_folder(tmp_path / "a" / "bge-m3")
    copy = tmp_path / "b" / "bge-m3"
    shutil.copytree(original, copy)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    assert fingerprint(copy) == fingerprint(original)


@pytest.mark.parametrize(
    "change",
    [
        "one byte in the middle of the weights",
        "a head",
        "the pooling",
        "the tokenizer",
        "a weight file added",
    ],
)
def test_what_changes_an_answer_changes_the_fingerprint(tmp_path: Path, change: str) -> None:
    folder = model_folder(tmp_path / "bge-m3")
    before = fingerprint(folder)
    if change == "one byte in the middle of the weights":
        # Neither in the first nor in the last megabyte, and the size kept.
        with (folder / "model.safetensors").open("r+b") as weights:
            weights.seek(6 * MB)
            byte = weights.read(1)
            weights.seek(6 * MB)
            weights.write(bytes([byte[0] ^ 1]))
    elif change == "a head":
        (folder / "colbert_linear.pt").write_bytes(b"colbert head, tuned")
    elif change == "the pooling":
        (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    elif change == "the tokenizer":
        (folder / "tokenizer.json").write_text('{"model": "bpe"}')
    else:
        (folder / "sparse_linear.pt").write_bytes(b"sparse head")
    assert fingerprint(folder) != before


def test_files_no_backend_loads_do_not_count(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "bge-m3")
    before = fingerprint(folder)
    (folder / "README.md").write_text("# another card")
    (folder / "onnx" / "model.onnx").write_bytes(b"another export")
    (folder / ".cache" / "download.metadata").write_text("fetched at 13:00")
    assert fingerprint(folder) == before


def test_the_backend_kind_and_dtype_count(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "bge-m3")
    prints = {
        fingerprint(folder),
        fingerprint(folder, backend="infinity"),
        fingerprint(folder, dtype="torch.float16"),
    }
    assert len(prints) == 3


def test_a_tiny_bge_m3_folder_is_hashed_whole(tmp_path: Path) -> None:
    folder = build_m3(tmp_path / "bge-m3")
    names = {path.relative_to(folder).as_posix() for path in loaded_files(folder)}
    assert {
        "config.json",
        "model.safetensors",
        "colbert_linear.pt",
        "sparse_linear.pt",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
    } <= names


def test_a_remote_is_keyed_by_where_it_is_and_what_it_says() -> None:
    info = ModelInfo("BAAI/bge-m3", 8192, 250_002, dimension=1024, pooling="cls")
    plain = remote_fingerprint("http://tei:8080", "tei", "1.8.0", info)
    # Credentials, a token in the query and a trailing slash are not the model.
    assert remote_fingerprint("http://user:key@tei:8080/?token=abc", "tei", "1.8.0", info) == plain
    others = {
        remote_fingerprint("http://tei-2:8080", "tei", "1.8.0", info),
        remote_fingerprint("http://tei:8080", "self", "1.8.0", info),
        remote_fingerprint("http://tei:8080", "tei", "1.9.0", info),
        remote_fingerprint("http://tei:8080", "tei", "1.8.0", ModelInfo("other", 8192, 250_002)),
        remote_fingerprint(
            "http://tei:8080", "tei", "1.8.0", ModelInfo("BAAI/bge-m3", 8192, 250_002, 16)
        ),
    }
    assert plain not in others and len(others) == 5


def test_a_probed_remote_serves_its_fingerprint() -> None:
    served = [*MODELS, {"id": "e5", "stats": {}, "capabilities": ["embed"]}]

    def probed(**settings: Any) -> ModelInfo:
        backend = infinity_backend(served, [], **settings)

        async def work() -> ModelInfo:
            await backend.start()
            try:
                return backend.model_info(Operation.EMBED)
            finally:
                await backend.stop()

        return asyncio.run(work())

    info = probed(remote_model="bge-m3")
    said = dataclasses.replace(info, fingerprint="")
    assert info.fingerprint == remote_fingerprint(INFINITY, "infinity", "", said)
    # The same remote with other credentials serves the same model; another model differs.
    assert probed(remote_model="bge-m3", remote_api_key="k2").fingerprint == info.fingerprint
    assert probed(remote_model="e5").fingerprint not in ("", info.fingerprint)


def test_a_folder_is_hashed_only_for_a_cache_other_processes_read() -> None:
    assert keys_are_shared(Settings(redis_url="redis://cache:6379/0"))
    assert not keys_are_shared(Settings())
    assert not keys_are_shared(Settings(cache_max_items=0))
