"""``bge-index``: a corpus file (or an existing collection) into a Qdrant collection of
dense + sparse (+ ColBERT) vectors computed by the service.

    bge-index corpus.jsonl --collection docs [--colbert] [--resume]
    bge-index --from-collection docs_v1 --collection docs_v2 --alias docs

The corpus is checked whole first (``retrieval.corpus``): a malformed row, or an id
that repeats (unless ``--on-duplicate first|last`` keeps one row of each), stops
the run before anything is sent, with every such row named by its line.

Texts go through ``/v1/hybrid-embeddings`` (one forward pass for every output) in
batches, ``--concurrency`` at once; each batch is stored (``wait=True``) as soon as
it is embedded, so a crash loses only the batches in flight. Point ids are UUIDv5
of the document ids: a re-run overwrites, never duplicates, and ``--resume`` skips
the documents already stored. With ``--alias`` the alias is moved to the collection
only once every document is in it, so searches through the alias see the old
collection, whole, until then.

The service's sparse index space (its SPARSE_TOKEN_MAPPING, as its answers say) is
recorded in the collection's metadata when the collection is created; indexing into
an existing collection recorded in another space is refused, as ``bge-search`` refuses
to query one (``retrieval.space``).

``--dense-dtype`` and ``--colbert-dtype`` (float32, float16, uint8) ask the service for
the vectors in that format and store them as Qdrant's datatype of it
(``retrieval.vector_types``); ``--colbert-max-tokens`` keeps each document's ColBERT rows
of largest norm (the service's ``colbert_max_tokens``). All three are recorded with the
collection, so its queries are embedded to match, and an existing collection is indexed
into with what it records (asking for other datatypes is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient
from tqdm import tqdm

from retrieval import store as qd
from retrieval.client import Embedded, ServiceClient
from retrieval.command import EXIT_STATUSES, run_tool
from retrieval.corpus import ON_DUPLICATE, Document, read_corpus
from retrieval.settings import Connections, add_connection_flags, connections
from retrieval.space import SparseSpace, mismatch, unrecorded, warn
from retrieval.vector_types import DTYPES, VectorTypes, embed

__all__ = ["IndexReport", "index_documents", "main"]


@dataclass(frozen=True, slots=True)
class IndexReport:
    documents: int  # read from the source (one per id)
    embedded: int  # sent to the service and stored on this run
    skipped: int  # already stored (--resume)
    seconds: float
    types: VectorTypes = field(default_factory=VectorTypes)  # what the collection stores

    @property
    def docs_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


async def index_documents(
    documents: Iterable[Document],
    service: ServiceClient,
    store: QdrantClient,
    collection: str,
    *,
    colbert: bool = False,
    resume: bool = False,
    batch_size: int = 32,
    concurrency: int = 4,
    total: int | None = None,
    progress: bool = True,
    on_warning: Callable[[str], None] = warn,
    types: VectorTypes | None = None,
) -> IndexReport:
    """Embed and store every document; the collection is created to fit the service.
    ``types``: the vectors' datatypes (and ColBERT pruning); None: what an existing
    collection records, else float32 and every row."""
    began = time.perf_counter()
    sparse = "lexical_colbert" in await service.served()
    if types is None:
        types = qd.vector_types(store, collection) or VectorTypes()
    stored = types

    async def vectors_of(texts: list[str]) -> list[Embedded]:
        return await embed(service, texts, stored, sparse=sparse, colbert=colbert, prune=True)

    probe = (await vectors_of(["dimension probe"]))[0]
    # The space of the probe's sparse answer: every later answer is held to it.
    space = await service.sparse_space() if sparse else None
    qd.ensure_collection(
        store,
        collection,
        dimension=len(probe.dense),
        sparse=sparse,
        colbert_dimension=len(probe.colbert[0]) if probe.colbert else None,
        space=space,
        types=types,
    )
    if space is not None:
        _check_space(store, collection, space, on_warning)
    read = sent = skipped = 0
    bar = tqdm(total=total, unit="doc", disable=not progress, file=sys.stderr, smoothing=0.1)

    async def one_batch(batch: list[Document]) -> None:
        vectors = await vectors_of([d.text for d in batch])
        qd.upsert(
            store,
            collection,
            [d.id for d in batch],
            [d.text for d in batch],
            [d.payload for d in batch],
            vectors,
        )
        bar.update(len(batch))

    in_flight: set[asyncio.Task[None]] = set()
    try:
        for batch in _batches(documents, batch_size):
            read += len(batch)
            if resume:
                todo = [batch[i] for i in qd.missing(store, collection, [d.id for d in batch])]
                skipped += len(batch) - len(todo)
                bar.update(len(batch) - len(todo))
                batch = todo
            if not batch:
                continue
            sent += len(batch)
            in_flight.add(asyncio.create_task(one_batch(batch)))
            if len(in_flight) >= concurrency:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a batch that failed stops the run
        for outcome in await asyncio.gather(*in_flight, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
    finally:
        for task in in_flight:
            task.cancel()
        bar.close()
    return IndexReport(read, sent, skipped, time.perf_counter() - began, types)


def _check_space(
    store: QdrantClient, collection: str, space: SparseSpace, on_warning: Callable[[str], None]
) -> None:
    recorded = qd.sparse_space(store, collection)
    if recorded is None:
        # Empty (created by a run that stopped before recording): nothing to contradict.
        if store.count(collection, exact=True).count == 0:
            qd.record_sparse_space(store, collection, space)
        else:
            on_warning(unrecorded(collection, space))
    elif recorded != space:
        raise mismatch(collection, recorded, space)


def _batches(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(documents)
    while batch := list(islice(it, size)):
        yield batch


def _from_collection(store: QdrantClient, name: str) -> Iterator[Document]:
    for payload in qd.scroll_texts(store, name):
        document_id, text = payload.pop("doc_id", None), payload.pop("text", None)
        if not isinstance(document_id, str) or not isinstance(text, str):
            raise ValueError(f"collection `{name}` has a point without doc_id and text payload")
        yield Document(id=document_id, text=text, payload=payload)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bge-index",
        description="Embed a corpus with bge-serve into a Qdrant collection (dense + sparse, "
        "optionally ColBERT).",
        epilog=EXIT_STATUSES,
    )
    parser.add_argument("corpus", nargs="?", type=Path, help=".jsonl, .csv or .parquet")
    parser.add_argument("--collection", required=True, help="Collection to fill (created).")
    parser.add_argument("--from-collection", help="Re-embed this collection's texts instead.")
    parser.add_argument("--alias", help="Move this alias to the collection once it is complete.")
    parser.add_argument("--colbert", action="store_true", help="Store ColBERT multivectors too.")
    add_vector_type_flags(parser)
    parser.add_argument("--resume", action="store_true", help="Skip documents already stored.")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--id-field", default=None, help="Default: id, _id, doc_id or docid.")
    parser.add_argument(
        "--on-duplicate",
        choices=ON_DUPLICATE,
        default="error",
        help="Rows that repeat an id: an error naming them (default), or keep the first or "
        "the last row of each id; the report counts the rows dropped.",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4, help="Batches in flight.")
    parser.add_argument("--no-progress", action="store_true")
    add_connection_flags(parser)
    return parser


def add_vector_type_flags(parser: argparse.ArgumentParser) -> None:
    """--dense-dtype, --colbert-dtype and --colbert-max-tokens (bge-index and bge-eval)."""
    for side in ("dense", "colbert"):
        parser.add_argument(
            f"--{side}-dtype",
            choices=DTYPES,
            default=None,
            help=f"Store {side} vectors as this Qdrant datatype, asked of the service in that "
            "format (uint8: the service's int8 + 128, compared as stored; see "
            "docs/retrieval.md). Default: what an existing collection records, else float32.",
        )
    parser.add_argument(
        "--colbert-max-tokens",
        type=_positive,
        default=None,
        help="Keep each document's ColBERT rows of largest norm, at most this many "
        "(the service's colbert_max_tokens). Default: every row.",
    )


def vector_types_of(args: argparse.Namespace) -> VectorTypes | None:
    """The datatypes the flags ask for; None where none was given (the collection's)."""
    if args.dense_dtype is None and args.colbert_dtype is None and args.colbert_max_tokens is None:
        return None
    return VectorTypes(
        args.dense_dtype or "float32", args.colbert_dtype or "float32", args.colbert_max_tokens
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of rows, at least 1, not `{text}`")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.corpus is None) == (args.from_collection is None):
        parser.error("give a corpus file or --from-collection, not both")
    return run_tool(
        "bge-index",
        lambda: _index(args),
        on_interrupt=" (the batches stored so far stay: --resume goes on from them)",
    )


def _index(args: argparse.Namespace) -> int:
    where = connections(args)
    # Checked before the store is opened or the service asked anything.
    corpus = (
        read_corpus(
            args.corpus,
            text_field=args.text_field,
            id_field=args.id_field,
            on_duplicate=args.on_duplicate,
        )
        if args.corpus is not None
        else None
    )
    store = where.qdrant()
    try:
        if corpus is not None:
            documents: Iterable[Document] = corpus
            total, dropped = corpus.documents, corpus.duplicates
        else:
            documents = _from_collection(store, args.from_collection)
            total, dropped = store.count(args.from_collection, exact=True).count, 0
        report = asyncio.run(_run(args, where, store, documents, total))
        line: dict[str, Any] = {
            "collection": args.collection,
            "store": where.where(),
            "documents": report.documents,
            "duplicates_dropped": dropped,
            "embedded": report.embedded,
            "skipped": report.skipped,
            "seconds": round(report.seconds, 2),
            "docs_per_s": round(report.docs_per_s, 1),
            **report.types.metadata(),
        }
        if args.alias:
            line["alias"] = args.alias
            line["alias_was"] = qd.switch_alias(store, args.alias, args.collection)
        print(json.dumps(line))
    finally:
        store.close()
    return 0


async def _run(
    args: argparse.Namespace,
    where: Connections,
    store: QdrantClient,
    documents: Iterable[Document],
    total: int | None,
) -> IndexReport:
    async with where.service(concurrency=args.concurrency) as service:
        return await index_documents(
            documents,
            service,
            store,
            args.collection,
            colbert=args.colbert,
            resume=args.resume,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            total=total,
            progress=not args.no_progress,
            types=vector_types_of(args),
        )


if __name__ == "__main__":
    sys.exit(main())
