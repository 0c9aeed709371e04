"""The README and the env example document every setting, as it is."""

from __future__ import annotations

from pathlib import Path

import msgspec

from engine.env_example import env_example
from engine.settings import Settings, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_documents_every_setting() -> None:
    text = README.read_text()
    for field in msgspec.structs.fields(Settings):
        assert f"| `{field.name.upper()}` | `--{field.name.replace('_', '-')}" in text, field.name


def test_env_example_lists_every_setting_with_its_default() -> None:
    example = README.parent / "deploy" / "bge.env.example"
    env: dict[str, str] = {}
    mentioned = set()
    for line in example.read_text().splitlines():
        name, sep, value = line.removeprefix("# ").partition("=")
        if sep and name.isupper():
            mentioned.add(name)
            if not line.startswith("#"):
                env[name] = value
    assert mentioned == {f.name.upper() for f in msgspec.structs.fields(Settings)}
    assert load_settings([], env) == Settings()


def test_env_example_is_the_generated_one() -> None:
    example = README.parent / "deploy" / "bge.env.example"
    assert example.read_text() == env_example(), "run: python -m engine.env_example"
