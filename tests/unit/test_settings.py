from __future__ import annotations

import subprocess

import msgspec
import pytest

from engine.settings import HELP, Settings, load_settings
from tests.conftest import serve_command


def test_defaults_are_the_seed_services() -> None:
    settings = load_settings([], {})
    assert settings.embedding_model_name == "BAAI/bge-m3"
    assert settings.reranker_model_name == "BAAI/bge-reranker-v2-m3"
    assert settings.port == 8011
    assert settings.device == "auto"
    assert settings.sparse_index_space == 1_048_576
    # Not the seed's: token ids, the space TEI and FlagEmbedding key sparse vectors by.
    assert settings.sparse_token_mapping == "tokenizer"


def test_env_then_flag_precedence() -> None:
    env = {"PORT": "9000", "USE_FP16": "false", "SPARSE_TOKEN_MAPPING": "hash"}
    assert load_settings([], env).port == 9000
    assert load_settings([], env).model_dtype == "float32"
    settings = load_settings(["--port", "9100", "--use-fp16"], env)
    assert settings.port == 9100
    assert settings.use_fp16 is True
    assert settings.model_dtype == "auto"
    assert settings.sparse_token_mapping == "hash"


def test_empty_env_value_means_default() -> None:
    assert load_settings([], {"EMBEDDING_SIZE": ""}).embedding_size is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "70000"}, "PORT"),
        ({"DEVICE": "tpu"}, "DEVICE"),
        ({"SPARSE_TOKEN_MAPPING": "md5"}, "SPARSE_TOKEN_MAPPING"),
        ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE"),
        ({"REMOTE_KIND": "triton"}, "REMOTE_KIND"),
        ({"REMOTE_RETRIES": "-1"}, "REMOTE_RETRIES"),
        ({"REMOTE_TIMEOUT_S": "0"}, "REMOTE_TIMEOUT_S"),
        ({"EMBED_BACKENDS": "remote,tei"}, "EMBED_BACKENDS"),
    ],
)
def test_bad_value_exits_2_naming_the_variable(
    env: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_settings([], env)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_every_setting_has_help_and_a_flag() -> None:
    names = {f.name for f in msgspec.structs.fields(Settings)}
    assert names == set(HELP)
    result = subprocess.run(
        [*serve_command(), "--help"], capture_output=True, text=True, check=True
    )
    for name in names:
        assert "--" + name.replace("_", "-") in result.stdout
        assert name.upper() in result.stdout


def test_remote_settings_from_env_and_flags() -> None:
    env = {
        "EMBED_BACKENDS": "remote,flag",
        "REMOTE_URL": "http://tei:80",
        "REMOTE_RERANK_URL": "http://tei-rr:80",
        "REMOTE_API_KEY": "s3cret",
    }
    settings = load_settings(["--remote-kind", "tei", "--remote-timeout-s", "2.5"], env)
    assert settings.embed_backends == ("remote", "flag")
    assert (settings.remote_url, settings.remote_rerank_url) == (
        "http://tei:80",
        "http://tei-rr:80",
    )
    assert settings.remote_embed_url is None
    assert (settings.remote_kind, settings.remote_timeout_s) == ("tei", 2.5)
    assert (settings.remote_retries, settings.remote_max_concurrency) == (2, 32)
    # Settings land in logs and tracebacks; the key must not.
    assert "s3cret" not in repr(settings)
    assert "remote_api_key='***'" in repr(settings)
    assert "remote_api_key=None" in repr(Settings())


def test_remote_urls_are_not_shown_in_the_settings_repr() -> None:
    # A REMOTE_URL may carry a token in its query or a password before its host.
    env = {
        "REMOTE_URL": "http://user:pw1@tei:80/?token=tok1",
        "REMOTE_RERANK_URL": "http://tei-rr:80/?token=tok2",
    }
    shown = repr(load_settings([], env))
    assert "tok1" not in shown and "tok2" not in shown and "pw1" not in shown
    assert "remote_url='***'" in shown


def test_sparse_backends_is_a_deprecated_alias_of_lexical_colbert_backends() -> None:
    assert Settings().lexical_colbert_chain == ("flag",)
    assert Settings().deprecations() == []
    new = load_settings([], {"LEXICAL_COLBERT_BACKENDS": "remote,flag"})
    assert new.lexical_colbert_chain == ("remote", "flag")
    assert new.deprecations() == []
    old = load_settings([], {"SPARSE_BACKENDS": "none", "LEXICAL_COLBERT_BACKENDS": "flag"})
    assert old.lexical_colbert_chain == ()
    (line,) = old.deprecations()
    assert line.startswith("SPARSE_BACKENDS is deprecated")
    assert "LEXICAL_COLBERT_BACKENDS=none" in line
    assert load_settings(["--sparse-backends", "remote"]).lexical_colbert_chain == ("remote",)
