"""Corpus files: JSONL, CSV or Parquet rows with an id and a text; other fields are payload.

BEIR's ``corpus.jsonl`` (``_id``, ``title``, ``text``) reads as is: the title, when
there is one, is prepended to the text that is embedded, as BEIR's evaluations do.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Document", "read_corpus"]

_ID_FIELDS = ("id", "_id", "doc_id", "docid")


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    payload: dict[str, Any]


def read_corpus(
    path: Path, *, text_field: str = "text", id_field: str | None = None
) -> Iterator[Document]:
    """Documents of ``path`` in file order; a row without an id or a text is an error
    naming its line."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows: Iterator[dict[str, Any]] = _jsonl(path)
    elif suffix == ".csv":
        rows = _csv(path)
    elif suffix == ".parquet":
        rows = _parquet(path)
    else:
        raise ValueError(f"{path}: a corpus is .jsonl, .csv or .parquet")
    for number, row in enumerate(rows, start=1):
        yield _document(row, number, path, text_field, id_field)


def _document(
    row: dict[str, Any], number: int, path: Path, text_field: str, id_field: str | None
) -> Document:
    key = id_field or next((name for name in _ID_FIELDS if name in row), None)
    if key is None or row.get(key) in (None, ""):
        raise ValueError(f"{path}:{number}: no document id (a field {id_field or _ID_FIELDS})")
    text = row.get(text_field)
    if not isinstance(text, str):
        raise ValueError(f"{path}:{number}: no text in field `{text_field}`")
    title = row.get("title")
    embedded = f"{title}\n{text}" if isinstance(title, str) and title.strip() else text
    if not embedded.strip():
        raise ValueError(f"{path}:{number}: the text is empty")
    payload = {name: value for name, value in row.items() if name != key}
    return Document(id=str(row[key]), text=embedded, payload=payload)


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _csv(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as rows:
        yield from csv.DictReader(rows)


def _parquet(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq  # only a Parquet corpus needs pyarrow

    for batch in pq.ParquetFile(path).iter_batches():
        yield from batch.to_pylist()
