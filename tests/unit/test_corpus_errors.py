"""A corpus bge-index cannot index as it is stops the run before anything is sent or
stored: each malformed row named by its line (``file:line: what is wrong``), a repeated
id named with its lines, exit status 2, no traceback. The service URL in these tests is
a closed port: bad input must be found before the service is asked anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval import index
from retrieval.corpus import CorpusError, read_corpus
from retrieval.evaluate import read_qrels, read_queries
from tests.conftest import free_port


def run_index(path: Path, capsys: Any, *extra: str) -> tuple[int, list[str]]:
    closed = f"http://127.0.0.1:{free_port()}"
    qdrant = path.parent / "qdrant"
    argv = [str(path), "--collection", "c", "--no-progress", "--service-url", closed]
    code = index.main([*argv, "--qdrant-path", str(qdrant), *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.out == ""  # no report: nothing was indexed
    assert not qdrant.exists(), "bad input opened the store"
    return code, captured.err.splitlines()


def rows(count: int, ids: list[Any] | None = None) -> list[dict[str, Any]]:
    ids = ids if ids is not None else [f"doc-{i}" for i in range(count)]
    return [{"id": ids[i], "text": f"text number {i}"} for i in range(count)]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_bad_json_line_is_named_by_its_line_in_the_file(tmp_path: Path, capsys: Any) -> None:
    lines = [json.dumps(row) for row in rows(60)]
    lines[49] = '{"id": "doc-49", "text": "unclosed" "x": 1}'  # line 50, column 37
    code, err = run_index(write_jsonl(tmp_path / "c.jsonl", lines), capsys)
    assert code == 2
    assert err[0] == (
        f"bge-index: {tmp_path / 'c.jsonl'}:50: not JSON: Expecting ',' delimiter (column 37)"
    )
    assert "1 malformed row of 60" in err[-1]


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("5", "a number"),
        ("null", "null"),
        ('"just a string"', "a string"),
        ("[1, 2]", "an array"),
        ("true", "a boolean"),
    ],
)
def test_a_json_line_that_is_not_an_object_is_named(
    tmp_path: Path, capsys: Any, line: str, what: str
) -> None:
    lines = [json.dumps(row) for row in rows(3)]
    lines.insert(1, line)
    code, err = run_index(write_jsonl(tmp_path / "c.jsonl", lines), capsys)
    assert code == 2
    assert err[0] == (
        f"bge-index: {tmp_path / 'c.jsonl'}:2: {what}, not an object with an id and a text"
    )


def test_every_malformed_line_is_reported_and_blank_lines_count(
    tmp_path: Path, capsys: Any
) -> None:
    lines = [json.dumps(row) for row in rows(8)]
    lines[1] = ""  # blank lines are skipped but still count as lines
    lines[2] = '{"text": "no id"}'
    lines[4] = '{"id": "x", "text": 7}'
    lines[5] = '{"id": "y", "text": "NaN", "score": NaN}'
    lines[6] = '{"id": "z", "text": "   "}'
    code, err = run_index(write_jsonl(tmp_path / "c.jsonl", lines), capsys)
    where = tmp_path / "c.jsonl"
    assert code == 2
    assert err == [
        f"bge-index: {where}:3: no document id (a field ('id', '_id', 'doc_id', 'docid'))",
        f"bge-index: {where}:5: the field `text` is a number, not a string",
        f"bge-index: {where}:6: not JSON: NaN is not a JSON value",
        f"bge-index: {where}:7: the text is empty",
        f"bge-index: {where}: 4 malformed rows of 7; nothing was indexed",
    ]


def test_bytes_that_are_not_utf8_and_lone_surrogates_are_named(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "c.jsonl"
    good = [json.dumps(row).encode() for row in rows(3)]
    path.write_bytes(
        b"\n".join(
            [
                good[0],
                b'{"id": "a", "text": "\xe9t\xe9"}',
                good[1],
                b'{"id": "b", "text": "\\udc00abc"}',
                good[2],
            ]
        )
        + b"\n"
    )
    code, err = run_index(path, capsys)
    assert code == 2
    assert err[0].startswith(f"bge-index: {path}:2: not UTF-8 (invalid continuation byte at")
    assert err[1] == f"bge-index: {path}:4: the text has a lone surrogate (U+DC00) at character 0"
    # Any field: the store could not hold it either.
    path.write_text(json.dumps({"id": "c", "text": "t", "tags": [{"k": "\ud800"}]}) + "\n")
    code, err = run_index(path, capsys)
    assert code == 2
    assert err[0] == (
        f"bge-index: {path}:1: the field `tags` has a lone surrogate (U+D800): no UTF-8 store "
        "can hold it"
    )


def test_repeated_ids_are_an_error_naming_the_first_and_its_lines(
    tmp_path: Path, capsys: Any
) -> None:
    # 100 lines, 80 distinct ids: doc-0 .. doc-19 come twice (lines 81..100), doc-3 thrice.
    ids = [f"doc-{i}" for i in range(80)] + [f"doc-{i}" for i in range(20)]
    lines = [json.dumps(row) for row in rows(100, ids)]
    code, err = run_index(write_jsonl(tmp_path / "c.jsonl", lines), capsys)
    assert code == 2
    assert err == [
        f"bge-index: {tmp_path / 'c.jsonl'}: 20 of 100 rows repeat an earlier id; the first, "
        "`doc-0`, is on lines 1 and 81. Give each document its own id, or keep one row of "
        "each with --on-duplicate last (or first)"
    ]
    # Every line of the first repeated id; a blank line still counts.
    lines = [json.dumps(row) for row in rows(6, ["a", "b", "a", "c", "a", "b"])]
    lines.insert(2, "")
    code, err = run_index(write_jsonl(tmp_path / "c.jsonl", lines), capsys)
    assert code == 2
    assert "3 of 6 rows repeat an earlier id; the first, `a`, is on lines 1, 4 and 6." in err[0]


def test_integer_and_string_ids_that_read_alike_are_the_same_id(
    tmp_path: Path, capsys: Any
) -> None:
    lines = [
        json.dumps({"id": 1, "text": "the integer"}),
        json.dumps({"id": 2, "text": "another"}),
        json.dumps({"id": "1", "text": "the string"}),
    ]
    code, err = run_index(write_jsonl(tmp_path / "c.jsonl", lines), capsys)
    assert code == 2
    assert "the first, `1`, is on lines 1 and 3" in err[0]
    assert "the integer 1 and the string `1` are one id" in err[0]


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("1.5", "a non-integer number (1.5)"),
        ("1.0", "a non-integer number (1.0)"),
        ("true", "a boolean"),
        ('["a"]', "an array"),
        ('{"k": 1}', "an object"),
        ('"\\udc00x"', "a string with a lone surrogate (U+DC00)"),
    ],
)
def test_an_id_that_is_not_a_string_or_an_integer_is_refused(
    tmp_path: Path, capsys: Any, value: str, what: str
) -> None:
    lines = [json.dumps({"id": "ok", "text": "fine"}), f'{{"id": {value}, "text": "t"}}']
    code, err = run_index(write_jsonl(tmp_path / "c.jsonl", lines), capsys)
    assert code == 2
    assert err[0] == (
        f"bge-index: {tmp_path / 'c.jsonl'}:2: the id is {what}; an id is a string or an integer"
    )


@pytest.mark.parametrize(
    ("keep", "texts"), [("last", ["b2", "a2", "c"]), ("first", ["a1", "b1", "c"])]
)
def test_on_duplicate_keeps_one_row_of_each_id(tmp_path: Path, keep: str, texts: list[str]) -> None:
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            json.dumps({"id": "a", "text": "a1"}),
            json.dumps({"id": "b", "text": "b1"}),
            json.dumps({"id": "a", "text": "a2"}),
            json.dumps({"id": "b", "text": "b2"}),
            json.dumps({"id": "c", "text": "c"}),
        ],
    )
    corpus = read_corpus(path, on_duplicate=keep)  # type: ignore[arg-type]
    documents = list(corpus)
    assert sorted(d.text for d in documents) == sorted(texts)
    assert len(documents) == corpus.documents == 3
    assert corpus.duplicates == 2 and corpus.rows == 5
    assert {d.id: d.payload["text"] for d in documents}["a"] == ("a2" if keep == "last" else "a1")


def test_csv_and_parquet_rows_are_named_too(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "c.csv"
    # The quoted text spans two lines: the next row starts on line 4.
    path.write_text('id,text\n1,"two\nlines"\n2,fine,extra\n,no id\n3,fine\n')
    code, err = run_index(path, capsys)
    assert code == 2
    assert err == [
        f"bge-index: {path}:4: 3 fields, the header has 2",
        f"bge-index: {path}:5: no document id (a field ('id', '_id', 'doc_id', 'docid'))",
        f"bge-index: {path}: 2 malformed rows of 4; nothing was indexed",
    ]
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": 1, "text": "a"}, {"id": 1, "text": "b"}]), parquet)
    code, err = run_index(parquet, capsys)
    assert code == 2
    assert "the first, `1`, is on rows 1 and 2" in err[0]


def test_a_missing_or_unknown_corpus_file_is_bad_input(tmp_path: Path, capsys: Any) -> None:
    code, err = run_index(tmp_path / "absent.jsonl", capsys)
    assert code == 2
    assert err == [f"bge-index: {tmp_path / 'absent.jsonl'}: No such file or directory"]
    code, err = run_index(write_jsonl(tmp_path / "c.txt", ["x"]), capsys)
    assert (code, err) == (
        2,
        [f"bge-index: {tmp_path / 'c.txt'}: a corpus is .jsonl, .csv or .parquet"],
    )


def test_bge_eval_names_the_bad_lines_of_its_queries_and_judgements(tmp_path: Path) -> None:
    queries = write_jsonl(
        tmp_path / "queries.jsonl",
        [json.dumps({"_id": "q1", "text": "fine"}), "{oops", json.dumps({"_id": "q3"})],
    )
    with pytest.raises(CorpusError) as raised:
        read_queries(queries)
    assert raised.value.lines == (
        f"{queries}:2: not JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{queries}: 1 malformed line of 3",
    )
    queries.write_text(json.dumps({"_id": 7, "text": "int id"}) + "\n" + json.dumps({"_id": "q3"}))
    with pytest.raises(CorpusError) as raised:
        read_queries(queries)
    assert raised.value.lines == (f"{queries}:2: a query is an `_id` and a `text` string",)
    qrels = tmp_path / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n\nq3\td3\thigh\n")
    with pytest.raises(CorpusError) as raised:
        read_qrels(qrels)
    shape = "a judgement is query-id, corpus-id and an integer score, tab-separated"
    assert raised.value.lines == (f"{qrels}:3: {shape}", f"{qrels}:5: {shape}")
