"""What the case files of this folder share: cases registered per framework, each run
with its failure reported rather than raised, and the answers written where the test
reads them.

    .venv-frameworks/bin/python tests/frameworks/CASES.py FRAMEWORK URL OUT < inputs.json

writes ``{"versions": {...}, "cases": {name: {"value": ...} | {"error": "...", "trace":
[...]}}}`` to the file OUT (not stdout: LiteLLM prints there). It runs in the frameworks'
environment, imported by the case files as the module beside them.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from typing import Any

Inputs = dict[str, Any]
Case = Callable[[str, Inputs], Any]


class Cases:
    """Each framework's cases, and the distributions they use (for the report of what
    was tested)."""

    def __init__(self, distributions: Mapping[str, Sequence[str]]) -> None:
        self._distributions = distributions
        self._cases: dict[str, dict[str, Case]] = {name: {} for name in distributions}

    def case(self, framework: str, name: str) -> Callable[[Case], Case]:
        def register(run: Case) -> Case:
            self._cases[framework][name] = run
            return run

        return register

    def run(self, framework: str, url: str, inputs: Inputs) -> dict[str, Any]:
        cases: dict[str, Any] = {}
        for name, call in self._cases[framework].items():
            try:
                cases[name] = {"value": call(url, inputs)}
            except Exception as error:  # noqa: BLE001 - every failure is reported, as it is
                trace = traceback.format_exception(error)
                cases[name] = {"error": f"{type(error).__name__}: {error}", "trace": trace[-6:]}
        versions = {name: version(name) for name in self._distributions[framework]}
        return {"versions": versions, "cases": cases}

    def main(self) -> None:
        framework, url, out = sys.argv[1:]
        answers = self.run(framework, url.rstrip("/"), json.load(sys.stdin))
        with open(out, "w", encoding="utf-8") as sink:
            json.dump(answers, sink)
