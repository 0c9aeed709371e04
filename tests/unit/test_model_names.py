"""Public model names: what responses call the models and what a request may call them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from engine.errors import ModelNotFound, StartupError
from engine.model_names import ModelNames, public_name
from engine.settings import Settings


def served_name(configured: str, override: str | None) -> str:
    return public_name(configured, override, "EMBEDDING_MODEL_NAME").name


def test_a_hub_id_is_its_own_name() -> None:
    assert served_name("BAAI/bge-m3", None) == "BAAI/bge-m3"


def test_a_bge_folder_gets_baais_organisation(tmp_path: Path) -> None:
    folder = tmp_path / "bge-m3"
    folder.mkdir()
    assert served_name(str(folder), None) == "BAAI/bge-m3"


@pytest.mark.parametrize(
    ("recorded", "folder_name", "served"),
    [
        # The published reranker records the model it was tuned from.
        ("BAAI/bge-m3", "bge-reranker-v2-m3", "BAAI/bge-reranker-v2-m3"),
        ("nreimers/MiniLM-L6-H384-uncased", "all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("/home/someone/checkpoints/m3", "bge-large-en-v1.5", "BAAI/bge-large-en-v1.5"),
    ],
)
def test_name_or_path_is_never_the_name(
    tmp_path: Path, recorded: str, folder_name: str, served: str
) -> None:
    folder = tmp_path / folder_name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": recorded}))
    assert served_name(str(folder), None) == served


def test_another_folder_keeps_its_own_name(tmp_path: Path) -> None:
    folder = tmp_path / "our-m3-finetune"
    folder.mkdir()
    assert served_name(str(folder), None) == "our-m3-finetune"


def test_a_symlinked_mount_is_named_as_configured_not_after_its_target(tmp_path: Path) -> None:
    target = tmp_path / "data" / "m3-2024"
    target.mkdir(parents=True)
    (tmp_path / "models").mkdir()
    mount = tmp_path / "models" / "bge-m3"
    mount.symlink_to(target, target_is_directory=True)
    assert served_name(str(mount), None) == "BAAI/bge-m3"
    assert served_name(str(target), None) == "m3-2024"


def test_a_hugging_face_cache_snapshot_is_named_by_its_repo(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--BAAI--bge-reranker-v2-m3"
    blob = repo / "blobs" / "4f1c0a"
    blob.parent.mkdir(parents=True)
    blob.write_text(json.dumps({"_name_or_path": "BAAI/bge-m3"}))
    snapshot = repo / "snapshots" / "953dc6f6"
    snapshot.mkdir(parents=True)
    # The cache's files are symlinks into blobs/, as huggingface_hub lays them out.
    (snapshot / "config.json").symlink_to(Path("../../blobs/4f1c0a"))
    assert served_name(str(snapshot), None) == "BAAI/bge-reranker-v2-m3"
    minilm = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc"
    minilm.mkdir(parents=True)
    assert served_name(str(minilm), None) == "sentence-transformers/all-MiniLM-L6-v2"


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
    assert (names.embedding, names.reranker) == ("BAAI/bge-m3", "rr")
    assert names.aliases == ("text-embedding-3-small",)


def test_the_chosen_names_are_logged_with_how_to_change_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "bge-reranker-v2-m3").mkdir()
    settings = Settings(reranker_model_name=str(tmp_path / "bge-reranker-v2-m3"))
    with caplog.at_level(logging.INFO, logger="engine.model_names"):
        ModelNames.from_settings(settings)
    assert caplog.messages == [
        "embedding model served as `BAAI/bge-m3` (EMBEDDING_MODEL_NAME is a hub id); "
        "set EMBEDDING_SERVED_NAME to name it otherwise",
        "reranker model served as `BAAI/bge-reranker-v2-m3` (the folder's name, a BAAI "
        "model's); set RERANKER_SERVED_NAME to name it otherwise",
    ]


def test_two_operations_never_share_a_name(tmp_path: Path) -> None:
    for side in ("a", "b"):
        (tmp_path / side / "bge-m3").mkdir(parents=True)
    settings = Settings(
        embedding_model_name=str(tmp_path / "a" / "bge-m3"),
        reranker_model_name=str(tmp_path / "b" / "bge-m3"),
    )
    with pytest.raises(StartupError, match="would both be served as `BAAI/bge-m3`"):
        ModelNames.from_settings(settings)
    # Not served, not a clash: an embedding-only deployment keeps the default reranker name.
    alone = ModelNames.from_settings(settings, reranks=False)
    assert alone.embedding == "BAAI/bge-m3"
    renamed = ModelNames.from_settings(
        Settings(
            embedding_model_name=settings.embedding_model_name,
            reranker_model_name=settings.reranker_model_name,
            reranker_served_name="acme/reranker",
        )
    )
    assert (renamed.embedding, renamed.reranker) == ("BAAI/bge-m3", "acme/reranker")


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
