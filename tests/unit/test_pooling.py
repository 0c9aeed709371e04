"""backends.pooling reads a folder's sentence-transformers pipeline as sentence-transformers
does, and refuses one the flag backend would compute wrongly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sentence_transformers.models import Pooling as StPooling
from sentence_transformers.sentence_transformer.modules.pooling import (
    _convert_legacy_pooling_kwargs,
)

from backends.pooling import Pipeline, Pooling, read_pipeline
from engine.errors import StartupError
from tests.fixtures.tiny_models import set_pooling


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    return tmp_path


def test_no_modules_json_is_flagembedding_cls_normalised(folder: Path) -> None:
    assert read_pipeline(folder) == Pipeline(Pooling.CLS, normalize=True)


@pytest.mark.parametrize("mode", ["cls", "mean", "lasttoken"])
@pytest.mark.parametrize("normalize", [True, False])
def test_modes_it_computes(folder: Path, mode: str, normalize: bool) -> None:
    set_pooling(folder, mode, normalize=normalize, max_seq_length=128)
    assert read_pipeline(folder) == Pipeline(Pooling(mode), normalize, max_seq_length=128)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # sentence-transformers' Pooling() defaults to mean when no flag says otherwise.
        ({}, "mean"),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode": "lasttoken"}, "lasttoken"),
        ({"pooling_mode": "cls", "pooling_mode_mean_tokens": True}, "cls"),
        ({"pooling_mode": ["lasttoken"]}, "lasttoken"),
    ],
)
def test_reads_the_config_as_sentence_transformers_does(
    folder: Path, config: dict[str, object], expected: str
) -> None:
    set_pooling(folder, "cls", normalize=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 8, **config})
    )
    assert read_pipeline(folder).pooling == Pooling(expected)
    settings = dict(config)
    _convert_legacy_pooling_kwargs(settings)  # what sentence-transformers does on loading
    theirs = StPooling(embedding_dimension=8, **settings)
    # One mode: sentence-transformers' vector is one hidden state wide.
    assert theirs.pooling_mode == expected
    assert theirs.get_embedding_dimension() == 8


def test_a_mode_name_is_case_sensitive_as_in_sentence_transformers(folder: Path) -> None:
    set_pooling(folder, "cls", normalize=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 8, "pooling_mode": "CLS"})
    )
    with pytest.raises(StartupError, match="CLS"):
        read_pipeline(folder)
    with pytest.raises(ValueError, match="CLS"):
        StPooling(embedding_dimension=8, pooling_mode="CLS")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pooling", "named"),
    [
        ("weightedmean", "weightedmean"),
        ("max", "max"),
        ("mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, "cls + mean"),
        # sentence-transformers' mean default stays on: it concatenates CLS and mean.
        ({"pooling_mode_cls_token": True}, "cls + mean"),
        ({"pooling_mode_mean_tokens": False}, "no pooling mode"),
    ],
)
def test_a_pooling_it_cannot_compute_is_a_startup_error(
    folder: Path, pooling: str | dict[str, bool], named: str
) -> None:
    set_pooling(folder, pooling, normalize=True)
    with pytest.raises(StartupError) as caught:
        read_pipeline(folder)
    assert str(folder) in str(caught.value) and named in str(caught.value)


def test_a_module_it_does_not_compute_is_a_startup_error(folder: Path) -> None:
    set_pooling(folder, "mean", normalize=True)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(StartupError, match="Dense module"):
        read_pipeline(folder)


def test_a_transformer_in_a_subfolder_is_a_startup_error(folder: Path) -> None:
    set_pooling(folder, "mean", normalize=True)
    modules = json.loads((folder / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(StartupError, match="0_Transformer"):
        read_pipeline(folder)


def test_unreadable_files_are_startup_errors(folder: Path) -> None:
    set_pooling(folder, "mean", normalize=True)
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(StartupError, match=r"cannot read config\.json"):
        read_pipeline(folder)
    (folder / "1_Pooling" / "config.json").unlink()
    with pytest.raises(StartupError, match="is missing"):
        read_pipeline(folder)
