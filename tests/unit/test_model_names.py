"""Public model names: what responses call the models and what a request may call them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import ModelNotFound
from engine.model_names import ModelNames, served_name
from engine.settings import Settings


def test_a_hub_id_is_its_own_name() -> None:
    assert served_name("BAAI/bge-m3", None) == "BAAI/bge-m3"


def test_a_folder_without_a_record_is_named_after_itself(tmp_path: Path) -> None:
    folder = tmp_path / "bge-m3"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": str(folder)}))
    assert served_name(str(folder), None) == "BAAI/bge-m3"


def test_a_folder_that_records_its_hub_id_is_named_by_it(tmp_path: Path) -> None:
    folder = tmp_path / "m3"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "BAAI/bge-m3"}))
    assert served_name(str(folder), None) == "BAAI/bge-m3"


def test_a_hugging_face_cache_snapshot_is_named_by_its_repo(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert served_name(str(snapshot), None) == "sentence-transformers/all-MiniLM-L6-v2"


def test_the_setting_wins(tmp_path: Path) -> None:
    assert served_name(str(tmp_path), "my-embedder") == "my-embedder"


def test_from_settings_names_both_models(tmp_path: Path) -> None:
    (tmp_path / "rr").mkdir()
    names = ModelNames.from_settings(
        Settings(
            embedding_model_name="BAAI/bge-m3",
            reranker_model_name=str(tmp_path / "rr"),
            model_aliases=("text-embedding-3-small",),
        )
    )
    assert (names.embedding, names.reranker) == ("BAAI/bge-m3", "BAAI/rr")
    assert names.aliases == ("text-embedding-3-small",)


@pytest.mark.parametrize("requested", [None, "", "BAAI/bge-m3", "bge-m3", "text-embedding-3-small"])
def test_accepted_names(requested: str | None) -> None:
    names = ModelNames("BAAI/bge-m3", "BAAI/bge-reranker-v2-m3", ("text-embedding-3-small",))
    assert names.check("BAAI/bge-m3", requested, "embed") == "BAAI/bge-m3"


def test_an_unknown_name_is_a_404_that_lists_the_accepted_ones() -> None:
    names = ModelNames("BAAI/bge-m3", "BAAI/bge-reranker-v2-m3", ("ada",))
    with pytest.raises(ModelNotFound) as info:
        names.check("BAAI/bge-m3", "/models/bge-m3", "embed")
    assert info.value.param == "model"
    assert info.value.message == (
        "model `/models/bge-m3` is not served here; embed answers to `BAAI/bge-m3`, `bge-m3`, `ada`"
    )


def test_a_huge_unknown_name_is_not_echoed_in_full() -> None:
    names = ModelNames("BAAI/bge-m3", "BAAI/bge-reranker-v2-m3")
    with pytest.raises(ModelNotFound) as info:
        names.check("BAAI/bge-m3", "x" * 200_000, "embed")
    assert len(info.value.message) < 300
