"""The README's configuration reference lists every setting, with its flag."""

from __future__ import annotations

from pathlib import Path

import msgspec

from engine.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_documents_every_setting() -> None:
    text = README.read_text()
    for field in msgspec.structs.fields(Settings):
        assert f"| `{field.name.upper()}` | `--{field.name.replace('_', '-')}" in text, field.name
