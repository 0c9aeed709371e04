"""The layers import downward only: what each top-level folder's docstring promises.

engine (what the service means) knows no HTTP and no way of computing; backends
(how results are computed) know no HTTP; retrieval is a client of the HTTP API
and works the same against a remote instance, so it imports none of the three (it
speaks through bge_client); bge_client, the typed client in client/, installs where
the server's stack does not, so it imports nothing of the repository but itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "engine": {"api", "backends", "retrieval", "worker"},
    "backends": {"api", "retrieval", "worker"},
    "api": {"retrieval", "worker"},
    "retrieval": {"engine", "backends", "api", "worker"},
    "client/bge_client": {"engine", "backends", "api", "worker", "retrieval", "bench", "tests"},
}


def imported_packages(source: Path) -> set[tuple[str, int]]:
    """Top-level package of every absolute import in ``source``, with its line."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name, line in sorted(imported_packages(path))
        if name in FORBIDDEN[package]
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_says_what_it_holds_and_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc, f"{package}/__init__.py has no docstring"
    assert "import" in doc.lower(), f"{package}/__init__.py does not say what it may import"


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from api.app import create_app\n    import backends.flag\n")
    assert imported_packages(module) == {("api", 2), ("backends", 3)}
