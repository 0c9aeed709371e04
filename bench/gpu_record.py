"""The GPU benchmark's rows, and each part's JSON, rewritten after every measurement so a
part stopped at its time limit keeps what it measured and names what it was doing."""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    system: str
    kind: str  # "call" (tokenisation included), "passes" (pre-tokenised) or "http"
    workload: str
    op: str  # dense, hybrid (dense + sparse + ColBERT) or rerank
    dtype: str
    texts: int = 0
    tokens: int = 0
    seconds: float = 0.0
    reps: int = 0
    texts_per_s: float = 0.0
    tokens_per_s: float = 0.0
    tflop_per_s: float = 0.0
    peak_fraction: float = 0.0
    peak_gpu_mib: float | None = None
    weights_gpu_mib: float | None = None
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""
    error: str | None = None


@dataclass
class Part:
    """One part's JSON, rewritten after every measurement."""

    path: Path
    deadline: float
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    current: str | None = None

    def save(self) -> None:
        body = {
            "rows": [asdict(r) for r in self.rows],
            "notes": self.notes,
            "current": self.current,
            **self.extra,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2))
        tmp.replace(self.path)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def skipped(self, row: Row, need_s: float) -> bool:
        """Record ``row`` as skipped when the time left cannot hold ``need_s``."""
        if self.left_s() >= need_s:
            return False
        row.error = f"skipped: {self.left_s():.0f} s left in this part, {need_s:.0f} s needed"
        self.rows.append(row)
        self.save()
        print(f"  SKIP {label_of(row)}: {row.error}", flush=True)
        return True

    @contextlib.contextmanager
    def measuring(self, row: Row) -> Iterator[Row]:
        """Run one measurement into ``row``: a failure is recorded, never raised."""
        self.current = label_of(row)
        self.save()
        try:
            yield row
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not stop the rest
            row.error = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"  FAIL {label_of(row)}: {row.error}", flush=True)
            traceback.print_exc()
        else:
            print(f"  {describe(row)}", flush=True)
        self.current = None
        self.rows.append(row)
        self.save()


def label_of(row: Row) -> str:
    return f"{row.system} / {row.workload} / {row.op} / {row.dtype}"


def describe(row: Row) -> str:
    head = f"{row.system:34s} {row.kind:6s} {row.workload:20s} {row.op:6s} {row.dtype:8s} "
    if not row.texts:  # a load, a build, a server's start
        return f"{head}{row.seconds:6.1f} s  {row.note}"
    return (
        f"{head}{row.texts_per_s:9.1f} texts/s {row.tokens_per_s:11.0f} tok/s "
        f"{row.tflop_per_s:7.1f} TFLOP/s {100 * row.peak_fraction:5.1f} % peak"
        + (f" {row.peak_gpu_mib:8.0f} MiB" if row.peak_gpu_mib is not None else "")
    )
