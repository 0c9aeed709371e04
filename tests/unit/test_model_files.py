"""Model settings to folders: a folder, a repo id under MODELS_DIR, or a clear refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.model_files import resolve_model_dir
from engine.errors import StartupError


def test_an_empty_folder_is_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as info:
        resolve_model_dir(str(tmp_path), "EMBEDDING_MODEL_NAME")
    assert str(info.value) == (
        f"EMBEDDING_MODEL_NAME={tmp_path}: no config.json in {tmp_path}: not a model folder"
    )


def test_a_repo_id_loads_from_models_dir(tmp_path: Path) -> None:
    (tmp_path / "bge-m3").mkdir()
    assert resolve_model_dir("BAAI/bge-m3", "EMBEDDING_MODEL_NAME", str(tmp_path)) == (
        tmp_path / "bge-m3"
    )
    with pytest.raises(StartupError, match="has no bge-reranker-v2-m3; fetch it with"):
        resolve_model_dir("BAAI/bge-reranker-v2-m3", "RERANKER_MODEL_NAME", str(tmp_path))
