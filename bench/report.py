"""A benchmark's results file: the machine it ran on, its parameters and its rows."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["write_results"]


def write_results(path: Path, rows: list[dict[str, Any]], **parameters: Any) -> None:
    path.parent.mkdir(exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    record = {"machine": machine, "python": platform.python_version(), **parameters}
    path.write_text(json.dumps({**record, "rows": rows}, indent=2) + "\n")
