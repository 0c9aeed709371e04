"""Corpus files: JSONL, CSV or Parquet rows with an id and a text; other fields are payload.

BEIR's ``corpus.jsonl`` (``_id``, ``title``, ``text``) reads as is: the title, when
there is one, is prepended to the text that is embedded, as BEIR's evaluations do.

A corpus is checked whole before anything is embedded (:func:`read_corpus`): a
malformed row would otherwise stop a run half done, and a repeated id would make
two rows one point, silently. Every problem is named by where it is: the line of a
JSONL or CSV file (blank lines count; a CSV row spanning lines is named by its
first), the row of a Parquet file.

Ids are strings. An integer id is its decimal string, the id a CSV file gives the
same document, so ``1`` and ``"1"`` are one id: in one corpus, a repeated id.
Any other kind of id (a float, a boolean, an array, an object) is refused rather
than given a spelling of our choosing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retrieval.command import InputError

__all__ = [
    "ON_DUPLICATE",
    "Corpus",
    "CorpusError",
    "Document",
    "OnDuplicate",
    "read_corpus",
    "read_objects",
]

OnDuplicate = Literal["error", "first", "last"]
ON_DUPLICATE: tuple[OnDuplicate, ...] = ("error", "first", "last")

_ID_FIELDS = ("id", "_id", "doc_id", "docid")
# Enough to fix a file by; the count says how many more there are.
_SHOWN = 20


class CorpusError(InputError):
    """A corpus file that cannot be indexed as it is."""


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    payload: dict[str, Any]


class _Malformed(Exception):
    """What is wrong with one row."""


@dataclass(frozen=True, slots=True)
class _Row:
    number: int  # line of the file (a CSV row's first), or row of a Parquet file
    fields: dict[str, Any] | None
    problem: str = ""


@dataclass(frozen=True, slots=True)
class _Shape:
    text_field: str
    id_field: str | None


class Corpus:
    """A checked corpus file. Iterating reads it again, in file order, one document per
    id; ``documents`` of them, ``duplicates`` rows dropped as repeats of an earlier or
    later row's id (``on_duplicate`` first or last)."""

    def __init__(
        self,
        path: Path,
        shape: _Shape,
        *,
        rows: int,
        duplicates: int,
        kept: dict[str, int] | None,
    ) -> None:
        self.path = path
        self.rows = rows
        self.duplicates = duplicates
        self._shape = shape
        self._kept = kept  # id -> the row kept for it, where some ids repeat

    @property
    def documents(self) -> int:
        return self.rows - self.duplicates

    def __iter__(self) -> Iterator[Document]:
        given = 0
        for row in _rows(self.path):
            if row.fields is None:
                raise self._changed(row.number, row.problem)
            try:
                document = _document(row.fields, self._shape)
            except _Malformed as exc:
                raise self._changed(row.number, str(exc)) from None
            if self._kept is None or self._kept.get(document.id) == row.number:
                given += 1
                yield document
        if given != self.documents:
            raise CorpusError(
                f"{self.path}: changed while it was indexed ({given} documents, not "
                f"{self.documents}): index it again"
            )

    def _changed(self, number: int, problem: str) -> CorpusError:
        where = _where(self.path, number)
        return CorpusError(f"{where}: {problem} (the file changed while it was indexed)")


def read_corpus(
    path: Path,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    on_duplicate: OnDuplicate = "error",
) -> Corpus:
    """``path`` checked whole: a :class:`CorpusError` names every malformed row (the
    first 20 and how many), or, with ``on_duplicate="error"``, the first id that
    repeats and all its lines; ``first`` or ``last`` keep that row of each id."""
    shape = _Shape(text_field, id_field)
    problems: list[str] = []
    malformed = rows = 0
    kept: dict[str, int] = {}
    integers: set[str] = set()  # ids given as JSON or Parquet integers
    repeats = 0
    first_repeat: tuple[str, list[int], set[bool]] | None = None
    for row in _rows(path):
        rows += 1
        try:
            if row.fields is None:
                raise _Malformed(row.problem)
            document = _document(row.fields, shape)
        except _Malformed as exc:
            malformed += 1
            if len(problems) < _SHOWN:
                problems.append(f"{_where(path, row.number)}: {exc}")
            continue
        key, integer = document.id, _id_is_integer(row.fields, shape)
        if key in kept:
            repeats += 1
            if first_repeat is None:
                first_repeat = (key, [kept[key]], {key in integers})
            if first_repeat[0] == key:
                first_repeat[1].append(row.number)
                first_repeat[2].add(integer)
            if on_duplicate == "last":
                kept[key] = row.number
        else:
            kept[key] = row.number
            if integer:
                integers.add(key)
    if malformed:
        shown = f" (the first {_SHOWN} shown)" if malformed > _SHOWN else ""
        raise CorpusError(
            *problems,
            f"{path}: {malformed} malformed row{'s' * (malformed != 1)} of {rows}{shown}; "
            "nothing was indexed",
        )
    if first_repeat is not None and on_duplicate == "error":
        raise CorpusError(_repeated(path, rows, repeats, *first_repeat))
    return Corpus(path, shape, rows=rows, duplicates=repeats, kept=kept if repeats else None)


def read_objects(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """A JSONL file's objects with their line numbers; a :class:`CorpusError` names the
    malformed lines (for the other JSONL files a tool reads, e.g. BEIR queries)."""
    rows = list(_jsonl(path))
    problems = [f"{path}:{row.number}: {row.problem}" for row in rows if row.fields is None]
    if problems:
        count = len(problems)
        raise CorpusError(
            *problems[:_SHOWN], f"{path}: {count} malformed line{'s' * (count != 1)} of {len(rows)}"
        )
    return [(row.number, row.fields) for row in rows if row.fields is not None]


def _repeated(
    path: Path, rows: int, repeats: int, key: str, lines: list[int], integer: set[bool]
) -> str:
    unit = "rows" if _format(path) == "parquet" else "lines"
    *head, tail = (str(n) for n in lines)
    mixed = f" (the integer {key} and the string `{key}` are one id)" if len(integer) > 1 else ""
    return (
        f"{path}: {repeats} of {rows} rows repeat an earlier id; the first, `{key}`, is on "
        f"{unit} {', '.join(head)} and {tail}{mixed}. Give each document its own id, or keep "
        "one row of each with --on-duplicate last (or first)"
    )


def _id_key(fields: dict[str, Any], shape: _Shape) -> str | None:
    return shape.id_field or next((name for name in _ID_FIELDS if name in fields), None)


def _document(fields: dict[str, Any], shape: _Shape) -> Document:
    key = _id_key(fields, shape)
    if key is None or fields.get(key) in (None, ""):
        raise _Malformed(f"no document id (a field {shape.id_field or _ID_FIELDS})")
    document_id = _id(fields[key])
    text = fields.get(shape.text_field)
    if text is None:
        raise _Malformed(f"no text in field `{shape.text_field}`")
    if not isinstance(text, str):
        raise _Malformed(f"the field `{shape.text_field}` is {_kind(text)}, not a string")
    title = fields.get("title")
    embedded = f"{title}\n{text}" if isinstance(title, str) and title.strip() else text
    if not embedded.strip():
        raise _Malformed("the text is empty")
    if (at := _surrogate_at(embedded)) is not None:
        # JSON may escape one (\udc00); no UTF-8 request body can carry it.
        raise _Malformed(
            f"the text has a lone surrogate (U+{ord(embedded[at]):04X}) at character {at}"
        )
    payload = {name: value for name, value in fields.items() if name != key}
    for name, value in payload.items():
        if (escaped := _surrogate_in(value)) is not None:
            raise _Malformed(
                f"the field `{name}` has a lone surrogate (U+{ord(escaped):04X}): no UTF-8 "
                "store can hold it"
            )
    return Document(id=document_id, text=embedded, payload=payload)


def _id(value: Any) -> str:
    if isinstance(value, str):
        if (at := _surrogate_at(value)) is not None:
            kind = f"a string with a lone surrogate (U+{ord(value[at]):04X})"
            raise _Malformed(f"the id is {kind}; an id is a string or an integer")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        raise _Malformed(
            f"the id is a non-integer number ({value!r}); an id is a string or an integer"
        )
    raise _Malformed(f"the id is {_kind(value)}; an id is a string or an integer")


def _id_is_integer(fields: dict[str, Any], shape: _Shape) -> bool:
    return isinstance(fields.get(_id_key(fields, shape) or ""), int)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _surrogate_at(text: str) -> int | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _surrogate_in(value: Any) -> str | None:
    """The first lone surrogate anywhere in a JSON value (keys included), if any."""
    if isinstance(value, str):
        at = _surrogate_at(value)
        return None if at is None else value[at]
    if isinstance(value, list):
        return next((found for item in value if (found := _surrogate_in(item))), None)
    if isinstance(value, dict):
        return next(
            (found for item in value.items() for part in item if (found := _surrogate_in(part))),
            None,
        )
    return None


def _where(path: Path, number: int) -> str:
    return f"{path}: row {number}" if _format(path) == "parquet" else f"{path}:{number}"


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".parquet"):
        return suffix[1:]
    raise CorpusError(f"{path}: a corpus is .jsonl, .csv or .parquet")


def _rows(path: Path) -> Iterator[_Row]:
    readers = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}
    return readers[_format(path)](path)


def _jsonl(path: Path) -> Iterator[_Row]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise CorpusError(f"{path}: {exc.strerror or exc}") from None
    with handle as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                # A byte-order mark on the first line is an editor's, not a JSON error.
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield _Row(number, None, f"not UTF-8 ({exc.reason} at byte {exc.start + 1})")
                continue
            try:
                value = json.loads(line, parse_constant=_not_json)
            except json.JSONDecodeError as exc:
                yield _Row(number, None, f"not JSON: {exc.msg} (column {exc.colno})")
                continue
            except (ValueError, RecursionError) as exc:
                yield _Row(number, None, f"not JSON: {exc}")
                continue
            if not isinstance(value, dict):
                yield _Row(number, None, f"{_kind(value)}, not an object with an id and a text")
                continue
            yield _Row(number, value)


def _not_json(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON has neither, nor has Qdrant's payload.
    raise ValueError(f"{name} is not a JSON value")


def _csv(path: Path) -> Iterator[_Row]:
    # surrogateescape: a byte that is not UTF-8 is reported at its row, not as the
    # decoder's error that would end the file.
    try:
        handle = path.open(encoding="utf-8", errors="surrogateescape", newline="")
    except OSError as exc:
        raise CorpusError(f"{path}: {exc.strerror or exc}") from None
    with handle:
        # csv.reader, not DictReader: blank lines must be seen to be counted.
        reader = csv.reader(handle)
        header = next(reader, None)
        start = reader.line_num + 1
        while header is not None:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                # Where a broken quote leaves the reader is not worth guessing at.
                yield _Row(start, None, f"not CSV: {exc}")
                return
            number, start = start, reader.line_num + 1
            if not values:
                continue
            if len(values) > len(header):
                yield _Row(number, None, f"{len(values)} fields, the header has {len(header)}")
                continue
            bad = next(
                (
                    (name, value[at])
                    for name, value in zip(header, values, strict=False)
                    if (at := _surrogate_at(value)) is not None
                ),
                None,
            )
            if bad is not None:
                name, escaped = bad
                byte = ord(escaped) - 0xDC00
                yield _Row(number, None, f"not UTF-8 (the byte 0x{byte:02X} in field `{name}`)")
                continue
            # A short row's missing fields are absent, as DictReader's restval None.
            yield _Row(number, dict(zip(header, values, strict=False)))


def _parquet(path: Path) -> Iterator[_Row]:
    import pyarrow.parquet as pq  # only a Parquet corpus needs pyarrow

    try:
        table = pq.ParquetFile(path)
    except FileNotFoundError as exc:
        raise CorpusError(f"{path}: {exc.strerror or exc}") from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise CorpusError(f"{path}: not a Parquet file ({exc})") from None
    number = 0
    for batch in table.iter_batches():
        for fields in batch.to_pylist():
            number += 1
            yield _Row(number, fields)
