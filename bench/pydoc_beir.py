"""A small real-text retrieval dataset in BEIR's format, built offline from what ships
with Python: the help topics of ``pydoc_data`` as the corpus, and the judgements of
Python's own ``help()``.

    .venv/bin/python -m bench.pydoc_beir --to data/pydoc-help

- corpus: every topic of ``pydoc_data.topics`` (79 in Python 3.11), id = the topic's
  label (``atom-identifiers``), title = its first line (``Identifiers (Names)``),
  text = the rest;
- queries: the topic names ``help()`` answers to (``pydoc.Helper.topics``, e.g.
  ``PRIVATENAMES``), lower-cased and split into words by the corpus's own vocabulary
  (``private names``); names that are aliases of another take their judgements;
- judgements: the label ``help(NAME)`` shows is relevant (2); the labels of the
  topics it lists as related are partly relevant (1). Names whose topic is not in
  the corpus (a module, a builtin) are left out.

The queries share few words with their documents' titles (``private names`` is
answered by "Identifiers (Names)"), which is what makes it a test of semantic
retrieval; it is small (about 70 queries), so read differences of a few points as
noise.
"""

from __future__ import annotations

import argparse
import json
import math
import pydoc
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

from retrieval.corpus import Document, read_corpus
from retrieval.evaluate import read_qrels, read_queries

_WORD = re.compile(r"[a-z]+")


def segment(name: str, frequency: Counter[str]) -> str:
    """``PRIVATENAMES`` as ``private names``: the most probable split into corpus words
    (unigram model, dynamic programming); a run of letters no word covers stays whole."""
    text = name.lower()
    total = sum(frequency.values())
    best: list[tuple[float, int]] = [(0.0, 0)]
    for end in range(1, len(text) + 1):
        options = []
        for start in range(max(0, end - 20), end):
            word = text[start:end]
            count = frequency.get(word, 0)
            cost = -math.log(count / total) if count else 15.0 + 5.0 * len(word)
            options.append((best[start][0] + cost, start))
        best.append(min(options))
    words = []
    end = len(text)
    while end > 0:
        start = best[end][1]
        words.append(text[start:end])
        end = start
    return " ".join(reversed(words))


def _label(name: str) -> tuple[str, str] | None:
    entry: object = pydoc.Helper.topics.get(name)
    while isinstance(entry, str):  # an alias of another topic name
        entry = pydoc.Helper.topics.get(entry)
    if not isinstance(entry, tuple):
        return None
    label, related = entry[0], entry[1] if len(entry) > 1 else ""
    return str(label), str(related)


def build(folder: Path) -> tuple[int, int]:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    frequency: Counter[str] = Counter()
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as corpus:
        for label, text in sorted(topics.items()):
            title, _, body = text.strip().partition("\n")
            frequency.update(_WORD.findall(text.lower()))
            row = {"_id": label, "title": title.strip(), "text": body.strip("*\n ")}
            corpus.write(json.dumps(row, ensure_ascii=False) + "\n")
    queries, judgements = [], []
    for name in sorted(pydoc.Helper.topics):
        found = _label(name)
        if found is None or found[0] not in topics:
            continue
        label, related = found
        grades = {label: 2}
        for other in related.split():
            linked = _label(other)
            if linked is not None and linked[0] in topics:
                grades.setdefault(linked[0], 1)
        queries.append({"_id": name, "text": segment(name, frequency)})
        judgements += [f"{name}\t{doc}\t{grade}\n" for doc, grade in grades.items()]
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(query) + "\n" for query in queries)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(judgements))
    return len(topics), len(queries)


@dataclass(frozen=True, slots=True)
class JudgedSet:
    """The set as the benchmarks use it: every document, and the queries that have
    judgements (in the file's order) with them."""

    corpus: list[Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def judged_set() -> JudgedSet:
    """The set built in a temporary folder and read back as ``bge-eval`` reads it."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        build(folder)
        corpus = list(read_corpus(folder / "corpus.jsonl"))
        queries = read_queries(folder / "queries.jsonl")
        qrels = read_qrels(folder / "qrels" / "test.tsv")
    judged = {qid: text for qid, text in queries.items() if qid in qrels}
    return JudgedSet(corpus, judged, qrels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", type=Path, default=Path("data/pydoc-help"))
    args = parser.parse_args()
    documents, queries = build(args.to)
    print(f"{args.to}: {documents} documents, {queries} queries")


if __name__ == "__main__":
    main()
