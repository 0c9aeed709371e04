"""``bge-search``: dense, sparse or hybrid search of a collection ``bge-index`` filled,
then optionally a ColBERT stage, bge-m3's three-way score and a cross-encoder stage.

    bge-search "what is a panda?" --collection docs [--mode hybrid] [--stage colbert]
        [--stage m3] [--stage rerank]

Hybrid fuses dense and sparse candidates (``--candidates`` of each) by reciprocal
rank as Qdrant's Query API does (``RrfQuery``), ``score = sum 1 / (k + rank)`` over
the lists a point is in, ranks counted from 0, ``k = 60``. ``--colbert`` re-scores
the fused candidates by MAX_SIM of the query's and each document's ColBERT vectors
(in Qdrant, one query: prefetch, RRF, then MAX_SIM); ``--stage m3`` reorders the best
``--rerank-top`` by bge-m3's own dense + sparse + ColBERT score of each text
(``/v1/m3-score``, FlagEmbedding's ``colbert+sparse+dense`` with its default weights: a
reranking stage at bi-encoder cost); ``--rerank`` (``--stage rerank``) then scores the best
``--rerank-top`` with the service's cross-encoder (``/v1/rerank``). Stages run in that
order, whichever are asked. The JSON answer gives every hit's score at every stage it
went through.

Query vectors are embedded in the datatypes the collection records (``bge-index
--dense-dtype``, ``--colbert-dtype``; ``retrieval.vector_types``), so a ``uint8``
collection is queried with ``uint8`` vectors.

A sparse or hybrid search is refused when the service's sparse vectors are in another
index space than the one ``bge-index`` recorded for the collection (nothing would
match); a collection with no record gets a warning that says what is assumed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qdrant_client import QdrantClient, models

from retrieval import store as qd
from retrieval.client import ServiceClient
from retrieval.command import EXIT_STATUSES, run_tool
from retrieval.settings import Connections, add_connection_flags, connections
from retrieval.space import SparseSpace, mismatch, unrecorded, warn
from retrieval.vector_types import VectorTypes, embed

__all__ = ["RRF_K", "STAGES", "Hit", "Mode", "Searcher", "main", "rrf"]

Mode = Literal["dense", "sparse", "hybrid"]
RRF_K = 60
# The stages after retrieval, in the order they run.
STAGES = ("colbert", "m3", "rerank")


@dataclass(slots=True)
class Hit:
    doc_id: str
    score: float  # the last stage's
    scores: dict[str, float] = field(default_factory=dict)  # every stage's
    payload: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.doc_id, "score": self.score, "scores": self.scores, **self.payload}


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> dict[str, float]:
    """Reciprocal-rank fusion as Qdrant computes it: ``sum 1 / (k + rank)``, rank from 0."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking):
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return fused


class Searcher:
    """Searches one collection (or alias) with vectors from one service."""

    def __init__(
        self,
        service: ServiceClient,
        store: QdrantClient,
        collection: str,
        *,
        on_warning: Callable[[str], None] = warn,
    ) -> None:
        self._service = service
        self._store = store
        self._collection = collection
        self._on_warning = on_warning
        self._space_checked = False
        self._types: VectorTypes | None = None

    async def search(
        self,
        query: str,
        *,
        mode: Mode = "hybrid",
        limit: int = 10,
        candidates: int = 100,
        colbert: bool = False,
        rerank: bool = False,
        rerank_top: int = 50,
        m3: bool = False,
    ) -> list[Hit]:
        """``limit`` hits; ``m3`` and ``rerank`` score the best ``rerank_top`` candidates
        of the stage before them."""
        if self._types is None:
            self._types = qd.vector_types(self._store, self._collection) or VectorTypes()
        embedded = (
            await embed(
                self._service, [query], self._types, sparse=mode != "dense", colbert=colbert
            )
        )[0]
        dense = models.Prefetch(query=embedded.dense, using=qd.DENSE, limit=candidates)
        prefetches = []
        if mode in ("dense", "hybrid"):
            prefetches.append(dense)
        if mode in ("sparse", "hybrid"):
            if embedded.sparse is None:
                raise ValueError("the service gave no sparse vector: it does not serve sparse")
            self._check_space(await self._service.sparse_space())
            prefetches.append(
                models.Prefetch(
                    query=models.SparseVector(
                        indices=embedded.sparse.indices, values=embedded.sparse.values
                    ),
                    using=qd.SPARSE,
                    limit=candidates,
                )
            )
        # Each stage's scores by point: the candidate lists first, then the fusion.
        stages: dict[str, dict[str, float]] = {}
        payloads: dict[str, dict[str, Any]] = {}
        for prefetch in prefetches:
            points = self._query(prefetch.query, prefetch.using, limit=candidates)
            stages[str(prefetch.using)] = {str(p.id): p.score for p in points}
            payloads.update({str(p.id): dict(p.payload or {}) for p in points})
        if mode == "hybrid":
            # The fusion of the two lists just fetched, as Qdrant's RrfQuery computes it
            # (a test holds them equal): no second round trip for the same candidates.
            fused = rrf([list(stages[qd.DENSE]), list(stages[qd.SPARSE])])
            best = sorted(fused, key=lambda key: -fused[key])[:candidates]
            stages["rrf"] = {key: fused[key] for key in best}
        order = list(stages["rrf" if mode == "hybrid" else str(prefetches[0].using)])
        if colbert:
            if embedded.colbert is None:
                raise ValueError("the service gave no ColBERT vectors")
            candidate = (
                models.Prefetch(
                    prefetch=prefetches,
                    query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
                    limit=candidates,
                )
                if mode == "hybrid"
                else prefetches[0]
            )
            rescored = self._store.query_points(
                self._collection,
                prefetch=candidate,
                query=embedded.colbert,
                using=qd.COLBERT,
                limit=candidates,
                with_payload=False,
            ).points
            stages["colbert"] = {str(p.id): p.score for p in rescored}
            order = [str(p.id) for p in rescored]
        if m3:
            top = order[:rerank_top]
            texts = [str(payloads[key].get("text", "")) for key in top]
            scores = await self._service.m3_score(query, texts) if top else []
            stages["m3"] = dict(zip(top, scores, strict=True))
            order = sorted(top, key=lambda key: -stages["m3"][key])
        if rerank:
            top = order[:rerank_top]
            texts = [str(payloads[key].get("text", "")) for key in top]
            scores = await self._service.rerank(query, texts) if top else []
            stages["rerank"] = dict(zip(top, scores, strict=True))
            order = sorted(top, key=lambda key: -stages["rerank"][key])
        last = list(stages)[-1]
        return [
            Hit(
                doc_id=str(payloads[key].get("doc_id", key)),
                score=stages[last][key],
                scores={stage: scored[key] for stage, scored in stages.items() if key in scored},
                payload={k: v for k, v in payloads[key].items() if k != "doc_id"},
            )
            for key in order[:limit]
        ]

    def _check_space(self, service: SparseSpace | None) -> None:
        """Once per searcher: the collection's recorded space is the service's."""
        if self._space_checked or service is None:
            return
        stored = qd.sparse_space(self._store, self._collection)
        if stored is None:
            self._on_warning(unrecorded(self._collection, service))
        elif stored != service:
            raise mismatch(self._collection, stored, service)
        self._space_checked = True

    def _query(self, query: Any, using: str | None, *, limit: int) -> list[models.ScoredPoint]:
        return self._store.query_points(
            self._collection, query=query, using=using, limit=limit, with_payload=True
        ).points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bge-search",
        description="Search a collection bge-index filled; JSON out.",
        epilog=EXIT_STATUSES,
    )
    parser.add_argument("query", nargs="+", help="One or more queries.")
    parser.add_argument("--collection", required=True, help="Collection or alias.")
    parser.add_argument("--mode", choices=("dense", "sparse", "hybrid"), default="hybrid")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=100, help="Per candidate list.")
    parser.add_argument(
        "--stage",
        action="append",
        choices=STAGES,
        default=[],
        help="A stage after retrieval (repeat for more; they run in the order colbert, m3, "
        "rerank): colbert re-scores with ColBERT vectors, m3 reorders with bge-m3's "
        "dense + sparse + ColBERT score (/v1/m3-score), rerank with the cross-encoder.",
    )
    parser.add_argument("--colbert", action="store_true", help="Same as --stage colbert.")
    parser.add_argument("--rerank", action="store_true", help="Same as --stage rerank.")
    parser.add_argument(
        "--rerank-top", type=int, default=50, help="Candidates the m3 and rerank stages score."
    )
    parser.add_argument("--no-text", action="store_true", help="Leave the text out of hits.")
    add_connection_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool("bge-search", lambda: _search(args))


def _search(args: argparse.Namespace) -> int:
    where = connections(args)
    store = where.qdrant()
    try:
        answers = asyncio.run(_run(args, where, store))
    finally:
        store.close()
    for query, hits in answers:
        shown = [hit.as_json() for hit in hits]
        if args.no_text:
            for hit in shown:
                hit.pop("text", None)
        print(json.dumps({"query": query, "hits": shown}, ensure_ascii=False))
    return 0


async def _run(
    args: argparse.Namespace, where: Connections, store: QdrantClient
) -> list[tuple[str, list[Hit]]]:
    async with where.service() as service:
        searcher = Searcher(service, store, args.collection)
        return [
            (
                query,
                await searcher.search(
                    query,
                    mode=args.mode,
                    limit=args.limit,
                    candidates=args.candidates,
                    colbert=args.colbert or "colbert" in args.stage,
                    rerank=args.rerank or "rerank" in args.stage,
                    rerank_top=args.rerank_top,
                    m3="m3" in args.stage,
                ),
            )
            for query in args.query
        ]


if __name__ == "__main__":
    sys.exit(main())
