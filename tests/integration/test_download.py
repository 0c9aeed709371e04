"""``bge-serve download``: against a hub on loopback (``tests/fake_hub.py``) serving the
tiny models' folders, through huggingface_hub's real download code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants

from backends.download import ModelSpec, check_folder, download, files_to_fetch
from engine.errors import StartupError
from tests.conftest import ModelDirs
from tests.fake_hub import FakeHub, serve

M3 = "BAAI/bge-m3"
RERANKER = "BAAI/bge-reranker-v2-m3"
SPECS = [ModelSpec("EMBEDDING_MODEL_NAME", M3, heads=True)]


@pytest.fixture(scope="module")
def repos(models: ModelDirs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny models as hub repositories, with the extras bge-m3's has (ONNX, images)."""
    root = tmp_path_factory.mktemp("hub")
    m3 = shutil.copytree(models.m3, root / "m3")
    (m3 / "onnx").mkdir()
    (m3 / "onnx" / "model.onnx").write_bytes(b"\0" * 4096)
    (m3 / "onnx" / "config.json").write_text("{}")
    (m3 / "imgs").mkdir()
    (m3 / "imgs" / "bm.png").write_bytes(b"\x89PNG")
    (m3 / "README.md").write_text("# bge-m3")
    reranker = shutil.copytree(models.reranker, root / "reranker")
    return {M3: m3, RERANKER: reranker}


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The test session runs offline (conftest); the loopback hub is the only one reached.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    huggingface_hub.close_session()
    yield
    huggingface_hub.close_session()


def same_files(got: Path, source: Path, names: list[str]) -> None:
    for name in names:
        assert (got / name).read_bytes() == (source / name).read_bytes(), name


@pytest.mark.usefixtures("online")
def test_fetches_what_the_backends_load_and_nothing_else(
    repos: dict[str, Path], tmp_path: Path
) -> None:
    hub = FakeHub(dict(repos))
    with serve(hub):
        folders = download(
            [*SPECS, ModelSpec("RERANKER_MODEL_NAME", RERANKER, heads=False)],
            tmp_path,
            endpoint=hub.url,
            progress=lambda _: None,
        )
    assert folders == {
        "EMBEDDING_MODEL_NAME": tmp_path / "bge-m3",
        "RERANKER_MODEL_NAME": tmp_path / "bge-reranker-v2-m3",
    }
    wanted = files_to_fetch(hub.files(M3), heads=True)
    assert {"model.safetensors", "colbert_linear.pt", "sparse_linear.pt", "config.json"} <= set(
        wanted
    )
    assert not any(name.startswith(("onnx/", "imgs/")) or name == "README.md" for name in wanted)
    assert not any(name.startswith(("onnx/", "imgs/")) for name in hub.fetched())
    same_files(tmp_path / "bge-m3", repos[M3], wanted)
    assert check_folder(tmp_path / "bge-m3", heads=True) == []


@pytest.mark.usefixtures("online")
def test_an_interrupted_download_resumes_where_it_stopped(
    repos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub keeps what it got in whole chunks (10 MB); the tiny model is far
    # smaller than one, so the chunks here are 4 KB.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    hub = FakeHub(dict(repos), cut={"model.safetensors": 20_000})
    with serve(hub):
        # huggingface_hub 1+ resumes a dropped transfer within the same call.
        download(SPECS, tmp_path, endpoint=hub.url, progress=lambda _: None)
    weights = [s for s in hub.seen if s.method == "GET" and s.path.endswith("/model.safetensors")]
    assert len(weights) == 2 and weights[0].range is None
    assert weights[1].range is not None
    resumed_at = int(weights[1].range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 20_000  # from what it kept, not from the start
    same_files(tmp_path / "bge-m3", repos[M3], ["model.safetensors"])
    assert check_folder(tmp_path / "bge-m3", heads=True) == []


@pytest.mark.usefixtures("online")
def test_a_model_without_the_heads_is_refused_before_downloading(
    repos: dict[str, Path], tmp_path: Path
) -> None:
    hub = FakeHub({M3: repos[RERANKER]})
    with serve(hub), pytest.raises(StartupError, match=r"no colbert_linear\.pt, sparse_linear\.pt"):
        download(SPECS, tmp_path, endpoint=hub.url, progress=lambda _: None)
    assert hub.fetched() == set()


def test_check_folder_names_what_is_broken(models: ModelDirs, tmp_path: Path) -> None:
    broken = shutil.copytree(models.m3, tmp_path / "m3")
    (broken / "sparse_linear.pt").unlink()
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    problems = check_folder(broken, heads=True)
    assert any(p.startswith("model.safetensors:") for p in problems), problems
    assert "no sparse_linear.pt" in problems
    assert check_folder(models.reranker, heads=False) == []


def test_the_command_prints_the_settings_to_use(repos: dict[str, Path], tmp_path: Path) -> None:
    with serve(FakeHub(dict(repos))) as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf-home"),
            "EMBEDDING_MODEL_NAME": M3,
            "RERANKER_MODEL_NAME": RERANKER,
        }
        result = subprocess.run(
            [sys.executable, "-m", "api.cli", "download", "--to", str(tmp_path / "models")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr
    # Repo ids that load from MODELS_DIR keep their hub names as public names.
    assert result.stdout.splitlines() == [
        f"MODELS_DIR={tmp_path / 'models'}",
        "EMBEDDING_MODEL_NAME=BAAI/bge-m3",
        "RERANKER_MODEL_NAME=BAAI/bge-reranker-v2-m3",
    ]
    assert "checked" in result.stderr
    assert check_folder(tmp_path / "models" / "bge-m3", heads=True) == []


def test_the_command_fails_with_what_to_do(tmp_path: Path) -> None:
    with serve(FakeHub({})) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        result = subprocess.run(
            [sys.executable, "-m", "api.cli", "download", "--to", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 1
    assert "EMBEDDING_MODEL_NAME=BAAI/bge-m3: the download failed" in result.stderr
    assert result.stdout == ""
