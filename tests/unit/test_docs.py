"""The documentation states every setting as it is, the README stays short, and no page
links to a file or heading that is not there."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from engine.env_example import configuration_markdown, env_example
from engine.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

# [text](target) and ![alt](target), with an optional "title"; targets hold no spaces.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`+[^`]*`+")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks: `# ...` in a bash block is no heading."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _anchors(page: Path) -> set[str]:
    """The fragments GitHub gives the page's headings (a repeated one gets -1, -2, ...)."""
    anchors: set[str] = set()
    for line in _prose(page.read_text()):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        unique, n = slug, 0
        while unique in anchors:
            n += 1
            unique = f"{slug}-{n}"
        anchors.add(unique)
    return anchors


def _links(page: Path) -> list[str]:
    # Joined, not line by line: a link's text may wrap onto the next line.
    return _LINK.findall(_INLINE_CODE.sub("", "\n".join(_prose(page.read_text()))))


def test_configuration_page_is_the_generated_one() -> None:
    page = DOCS / "configuration.md"
    assert page.read_text() == configuration_markdown(), (
        "run: python -m engine.env_example --markdown > docs/configuration.md"
    )


def test_configuration_page_lists_every_setting() -> None:
    text = configuration_markdown()
    for field in msgspec.structs.fields(Settings):
        assert f"| `{field.name.upper()}` | `--{field.name.replace('_', '-')}`" in text, field.name


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines; move detail to a page under docs/"


def test_readme_links_every_page() -> None:
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in _links(README)}
    missing = [str(page.relative_to(ROOT)) for page in PAGES[1:] if page.resolve() not in linked]
    assert not missing, f"README.md's Documentation list lacks {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
            broken.append(f"{target}: no such heading")
    assert not broken, broken


def test_env_example_lists_every_setting_with_its_default() -> None:
    example = ROOT / "deploy" / "bge.env.example"
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
    example = ROOT / "deploy" / "bge.env.example"
    assert example.read_text() == env_example(), "run: python -m engine.env_example"
