"""``bge-eval``: retrieval quality of each search pipeline on a BEIR-format folder.

    bge-eval path/to/dataset --collection dataset [--modes dense,sparse,hybrid,...]

The folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``,
``score``, with a header line). The corpus is indexed first (``bge-index --resume``:
a second run embeds nothing), then every query is searched by every mode, 100 hits
each, and nDCG@10, MRR@10 and Recall@100 are computed by ``ir-measures`` (over
``pytrec_eval``) for the queries that have judgements. The table is printed and
written, with the settings, to ``eval.json`` and a bar chart to ``eval.png``.

Modes: ``dense``, ``sparse``, ``hybrid``, each optionally followed by ``+colbert``,
``+m3`` and/or ``+rerank`` (``hybrid+colbert``, ``hybrid+m3``, ``dense+rerank``...):
the stages of ``bge-search`` (``+m3`` reorders the best ``--rerank-top`` by bge-m3's
three-way score, ``/v1/m3-score``). The default is every mode the service can serve:
without sparse (a dense-only model) only ``dense`` and ``dense+rerank``.

Each mode's size is the bytes of stored vectors it searches per document (``bytes/doc``:
dense, sparse, both for hybrid, plus ColBERT for ``+colbert``; ``+m3`` and ``+rerank``
store nothing), counted from the collection's points and the datatypes it records
(``--dense-dtype``, ``--colbert-dtype``, ``--colbert-max-tokens`` as ``bge-index``
takes them): what a Qdrant server keeps in memory or on disk for them before its own
overhead and indexes. The embedded local mode stores every datatype as float32, so its
folder's size would not tell float16 or uint8 apart.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ir_measures
from ir_measures import RR, R, nDCG

from retrieval import store as qd
from retrieval.client import ServiceClient
from retrieval.command import EXIT_STATUSES, InputError, run_tool
from retrieval.corpus import CorpusError, read_corpus, read_objects
from retrieval.index import add_vector_type_flags, index_documents, vector_types_of
from retrieval.search import STAGES, Mode, Searcher
from retrieval.settings import Connections, add_connection_flags, connections
from retrieval.vector_types import VectorTypes

__all__ = ["MEASURES", "Pipeline", "evaluate_run", "main", "read_qrels", "read_queries"]

MEASURES = (nDCG @ 10, RR @ 10, R @ 100)
_NAMES = {str(nDCG @ 10): "nDCG@10", str(RR @ 10): "MRR@10", str(R @ 100): "Recall@100"}
_DEPTH = 100
_ALL_MODES = ("dense", "sparse", "hybrid", "hybrid+colbert", "hybrid+m3", "hybrid+rerank")
_DENSE_MODES = ("dense", "dense+rerank")


@dataclass(frozen=True, slots=True)
class Pipeline:
    name: str
    mode: Mode
    colbert: bool
    rerank: bool
    m3: bool = False

    @classmethod
    def parse(cls, name: str) -> Pipeline:
        base, *stages = name.split("+")
        if base not in ("dense", "sparse", "hybrid") or not set(stages) <= set(STAGES):
            raise InputError(
                f"unknown mode `{name}`: dense, sparse or hybrid, then any of +colbert, +m3 "
                "and +rerank"
            )
        return cls(
            name,
            base,  # type: ignore[arg-type]
            "colbert" in stages,
            "rerank" in stages,
            "m3" in stages,
        )

    def stored(self, sizes: dict[str, float]) -> float:
        """Bytes of the stored vectors this pipeline searches, per document."""
        names = {"dense": [qd.DENSE], "sparse": [qd.SPARSE], "hybrid": [qd.DENSE, qd.SPARSE]}
        used = names[self.mode] + ([qd.COLBERT] if self.colbert else [])
        return sum(sizes.get(name, 0.0) for name in used)


def read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    problems: list[str] = []
    for number, row in read_objects(path):
        qid, text = row.get("_id"), row.get("text")
        if not isinstance(qid, str | int) or isinstance(qid, bool) or not isinstance(text, str):
            problems.append(f"{path}:{number}: a query is an `_id` and a `text` string")
        else:
            queries[str(qid)] = text
    if problems:
        raise CorpusError(*problems)
    return queries


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    try:
        rows = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise CorpusError(f"{path}: {exc.strerror or exc}") from None
    with rows:
        reader = csv.reader(rows, delimiter="\t")
        for row in reader:
            if not row or row[0] == "query-id":
                continue
            try:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
            except (IndexError, ValueError):
                problems.append(
                    f"{path}:{reader.line_num}: a judgement is query-id, corpus-id and an "
                    "integer score, tab-separated"
                )
    if problems:
        raise CorpusError(*problems)
    return qrels


def evaluate_run(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
) -> dict[str, float]:
    """nDCG@10, MRR@10 and Recall@100 averaged over the judged queries; a judged query
    with no hits counts as zero."""
    judged = {qid: docs for qid, docs in qrels.items() if any(r > 0 for r in docs.values())}
    complete = {qid: run.get(qid) or {"": 0.0} for qid in judged}
    values = ir_measures.calc_aggregate(MEASURES, judged, complete)
    return {_NAMES[str(measure)]: float(values[measure]) for measure in MEASURES}


async def _search_all(
    searcher: Searcher, queries: dict[str, str], pipeline: Pipeline, rerank_top: int
) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries.items():
        hits = await searcher.search(
            text,
            mode=pipeline.mode,
            limit=_DEPTH,
            candidates=_DEPTH,
            colbert=pipeline.colbert,
            rerank=pipeline.rerank,
            rerank_top=rerank_top,
            m3=pipeline.m3,
        )
        # Ranks, not raw scores: a reranked head and the fused tail are not comparable.
        run[qid] = {hit.doc_id: float(len(hits) - rank) for rank, hit in enumerate(hits)}
    return run


async def evaluate(
    folder: Path,
    collection: str,
    service: ServiceClient,
    where: Connections,
    *,
    modes: Sequence[str] | None,
    split: str,
    rerank_top: int,
    progress: bool,
    types: VectorTypes | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    served = await service.served()
    if modes is None:
        modes = _ALL_MODES if "lexical_colbert" in served else _DENSE_MODES
        modes = [m for m in modes if "rerank" not in m or "rerank" in served]
    pipelines = [Pipeline.parse(name) for name in modes]
    corpus = read_corpus(folder / "corpus.jsonl")
    store = where.qdrant()
    try:
        report = await index_documents(
            corpus,
            service,
            store,
            collection,
            colbert=any(p.colbert for p in pipelines),
            resume=True,
            progress=progress,
            types=types,
        )
        queries = read_queries(folder / "queries.jsonl")
        qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
        queries = {qid: text for qid, text in queries.items() if qid in qrels}
        searcher = Searcher(service, store, collection)
        table = {
            p.name: evaluate_run(qrels, await _search_all(searcher, queries, p, rerank_top))
            for p in pipelines
        }
        sizes = qd.vector_bytes(store, collection)
    finally:
        store.close()
    facts = {
        "dataset": folder.name,
        "queries": len(queries),
        "documents": report.documents,
        "embedded_this_run": report.embedded,
        "rerank_top": rerank_top,
        **report.types.metadata(),
        "bytes_per_document": {p.name: round(p.stored(sizes), 1) for p in pipelines},
    }
    return table, facts


def markdown(table: dict[str, dict[str, float]], sizes: dict[str, float] | None = None) -> str:
    """The metrics of each mode, and its stored bytes per document where ``sizes`` has them."""
    names = list(_NAMES.values())
    size_column = sizes is not None
    head = "| mode | " + " | ".join(names) + (" | bytes/doc |" if size_column else " |")
    lines = [head, "|---|" + "---:|" * (len(names) + size_column)]
    for mode, values in table.items():
        cells = [f"{values[n]:.3f}" for n in names]
        if sizes is not None:
            cells.append(f"{sizes.get(mode, 0.0):,.0f}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(table: dict[str, dict[str, float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(_NAMES.values())
    modes = list(table)
    width = 0.8 / len(modes)
    figure, axes = plt.subplots(figsize=(8, 4))
    for i, mode in enumerate(modes):
        xs = [j + i * width for j in range(len(names))]
        axes.bar(xs, [table[mode][n] for n in names], width, label=mode)
    axes.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bge-eval",
        description="nDCG@10, MRR@10, Recall@100 of each search mode.",
        epilog=EXIT_STATUSES,
    )
    parser.add_argument("dataset", type=Path, help="BEIR-format folder.")
    parser.add_argument("--collection", help="Default: the folder's name.")
    parser.add_argument("--modes", help=f"Comma-separated (default: {','.join(_ALL_MODES)}).")
    parser.add_argument("--split", default="test", help="qrels/<split>.tsv")
    parser.add_argument(
        "--rerank-top", type=int, default=100, help="Candidates the +m3 and +rerank stages score."
    )
    add_vector_type_flags(parser)
    parser.add_argument("--out", type=Path, default=None, help="Default: the dataset folder.")
    parser.add_argument("--title", default=None, help="The chart's title, e.g. the model.")
    parser.add_argument("--no-progress", action="store_true")
    add_connection_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool("bge-eval", lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    where = connections(args)
    out = args.out or args.dataset
    table, facts = asyncio.run(_run(args, where))
    print(markdown(table, facts["bytes_per_document"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({**facts, "results": table}, indent=2) + "\n")
    chart(table, args.title or f"{facts['dataset']} ({facts['queries']} queries)", out / "eval.png")
    print(f"wrote {out / 'eval.json'} and {out / 'eval.png'}", file=sys.stderr)
    return 0


async def _run(
    args: argparse.Namespace, where: Connections
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    modes = args.modes.split(",") if args.modes else None
    async with where.service() as service:
        return await evaluate(
            args.dataset,
            args.collection or args.dataset.name,
            service,
            where,
            modes=modes,
            split=args.split,
            rerank_top=args.rerank_top,
            progress=not args.no_progress,
            types=vector_types_of(args),
        )


if __name__ == "__main__":
    sys.exit(main())
