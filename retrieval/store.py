"""The Qdrant side: a collection with named vectors ``dense`` (cosine), ``sparse`` and,
optionally, ``colbert`` (a MAX_SIM multivector, kept for re-scoring only), points with
stable ids, the alias that makes a re-indexed collection live in one step, and what the
vectors are (the sparse index space, the dense and ColBERT datatypes), kept in its
metadata."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from qdrant_client import QdrantClient, models

from retrieval.client import Embedded
from retrieval.space import SparseSpace
from retrieval.vector_types import BYTES_PER_VALUE, VectorTypes

__all__ = [
    "COLBERT",
    "DENSE",
    "SPARSE",
    "ensure_collection",
    "missing",
    "point_id",
    "record_sparse_space",
    "scroll_texts",
    "sparse_space",
    "switch_alias",
    "upsert",
    "vector_bytes",
    "vector_types",
]

DENSE, SPARSE, COLBERT = "dense", "sparse", "colbert"
# Point ids are UUIDv5 of the document id in this namespace: the same document is the
# same point on every run, so a re-run overwrites instead of duplicating.
_NAMESPACE = uuid.UUID("3f0c5a52-1b7e-5d7e-9c55-0b9e6a3d2f11")


def point_id(document_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, document_id))


def ensure_collection(
    store: QdrantClient,
    name: str,
    *,
    dimension: int,
    sparse: bool,
    colbert_dimension: int | None,
    space: SparseSpace | None = None,
    types: VectorTypes | None = None,
) -> None:
    """Create ``name`` (recording ``space``, its sparse vectors' index space, and
    ``types``, its vectors' datatypes, with it), or check that the existing one has the
    same vectors."""
    types = types or VectorTypes()
    if store.collection_exists(name):
        _check_existing(store, name, dimension, sparse, colbert_dimension)
        _check_types(store, name, types, colbert=colbert_dimension is not None)
        return
    # Cosine for every datatype: a uint8 collection's integers are compared as they are
    # stored, against queries embedded as uint8 too (retrieval.vector_types).
    vectors = {
        DENSE: models.VectorParams(
            size=dimension,
            distance=models.Distance.COSINE,
            datatype=types.datatype(types.dense),
        )
    }
    if colbert_dimension is not None:
        vectors[COLBERT] = models.VectorParams(
            size=colbert_dimension,
            distance=models.Distance.COSINE,
            datatype=types.datatype(types.colbert),
            multivector_config=models.MultiVectorConfig(
                comparator=models.MultiVectorComparator.MAX_SIM
            ),
            # Only the fused candidates are re-scored with it: no index to build.
            hnsw_config=models.HnswConfigDiff(m=0),
        )
    store.create_collection(
        name,
        vectors_config=vectors,
        sparse_vectors_config={SPARSE: models.SparseVectorParams()} if sparse else None,
        # Qdrant's collection metadata (1.16+): durable, and read back with the collection.
        metadata={
            **(space.metadata() if sparse and space is not None else {}),
            **types.metadata(),
        },
    )


def vector_types(store: QdrantClient, name: str) -> VectorTypes | None:
    """The datatypes recorded for ``name`` (a collection or an alias); None for a
    collection built before bge-index recorded them, which holds float32, or for none at
    all (whose absence the first query that needs it reports, as before)."""
    collection = _collection_of(store, name)
    if not store.collection_exists(collection):
        return None
    return VectorTypes.from_metadata(store.get_collection(collection).config.metadata)


def _check_types(store: QdrantClient, name: str, asked: VectorTypes, *, colbert: bool) -> None:
    recorded = vector_types(store, name) or VectorTypes()
    difference = recorded.differs(asked, colbert=colbert)
    if difference is not None:
        raise ValueError(
            f"collection `{name}` {difference}: index into a new collection, or index with "
            "the datatypes it records"
        )


def vector_bytes(store: QdrantClient, name: str, *, sample: int = 1000) -> dict[str, float]:
    """Mean bytes per document of each named vector, as Qdrant stores the recorded
    datatypes (dense and ColBERT: values x bytes per value; sparse: a 4-byte index and a
    4-byte weight per entry), over the first ``sample`` points. Counted, not read from
    disk: the embedded local mode keeps every datatype as float32 on disk."""
    types = vector_types(store, name) or VectorTypes()
    width = {DENSE: BYTES_PER_VALUE[types.dense], COLBERT: BYTES_PER_VALUE[types.colbert]}
    points, _ = store.scroll(name, limit=sample, with_payload=False, with_vectors=True)
    totals: dict[str, float] = {}
    for point in points:
        vectors = point.vector if isinstance(point.vector, dict) else {}
        for key, vector in vectors.items():
            if isinstance(vector, models.SparseVector):
                size = 8 * len(vector.indices)
            elif vector and isinstance(vector[0], list):  # a multivector: rows x width
                size = width.get(key, 4) * sum(len(row) for row in vector)
            else:
                size = width.get(key, 4) * len(vector)
            totals[key] = totals.get(key, 0.0) + size
    return {key: total / len(points) for key, total in totals.items()} if points else {}


def sparse_space(store: QdrantClient, name: str) -> SparseSpace | None:
    """The sparse index space recorded for ``name`` (a collection or an alias), or None
    for a collection built before bge-index recorded it."""
    return SparseSpace.from_metadata(
        store.get_collection(_collection_of(store, name)).config.metadata
    )


def record_sparse_space(store: QdrantClient, name: str, space: SparseSpace) -> None:
    # Qdrant merges metadata keys: other keys a user set stay.
    store.update_collection(_collection_of(store, name), metadata=space.metadata())


def _collection_of(store: QdrantClient, name: str) -> str:
    return next(
        (a.collection_name for a in store.get_aliases().aliases if a.alias_name == name), name
    )


def _check_existing(
    store: QdrantClient, name: str, dimension: int, sparse: bool, colbert_dimension: int | None
) -> None:
    params = store.get_collection(name).config.params
    vectors = params.vectors if isinstance(params.vectors, dict) else {}
    have = vectors.get(DENSE)
    if have is None or have.size != dimension:
        size = have.size if have is not None else "none"
        raise ValueError(
            f"collection `{name}` has dense vectors of size {size}; the service's model gives "
            f"{dimension}: index into a new collection"
        )
    if sparse and SPARSE not in (params.sparse_vectors or {}):
        raise ValueError(f"collection `{name}` has no sparse vectors: index into a new collection")
    if colbert_dimension is not None and COLBERT not in vectors:
        raise ValueError(f"collection `{name}` has no colbert vectors: index into a new collection")


def missing(store: QdrantClient, name: str, document_ids: Sequence[str]) -> list[int]:
    """Positions in ``document_ids`` of the documents not yet in the collection."""
    present = {
        str(point.id)
        for point in store.retrieve(
            name, ids=[point_id(d) for d in document_ids], with_payload=False, with_vectors=False
        )
    }
    return [i for i, d in enumerate(document_ids) if point_id(d) not in present]


def upsert(
    store: QdrantClient,
    name: str,
    document_ids: Sequence[str],
    texts: Sequence[str],
    payloads: Sequence[dict[str, Any]],
    vectors: Sequence[Embedded],
) -> None:
    points = []
    for document_id, text, payload, embedded in zip(
        document_ids, texts, payloads, vectors, strict=True
    ):
        named: dict[str, Any] = {DENSE: embedded.dense}
        if embedded.sparse is not None:
            named[SPARSE] = models.SparseVector(
                indices=embedded.sparse.indices, values=embedded.sparse.values
            )
        if embedded.colbert is not None:
            named[COLBERT] = embedded.colbert
        points.append(
            models.PointStruct(
                id=point_id(document_id),
                vector=named,
                payload={**payload, "doc_id": document_id, "text": text},
            )
        )
    # wait=True: once this returns the batch is stored, so a crash after it loses nothing.
    store.upsert(name, points=points, wait=True)


def scroll_texts(store: QdrantClient, name: str, *, page: int = 256) -> Iterator[dict[str, Any]]:
    """Every point's payload in ``name`` (for re-indexing it elsewhere)."""
    offset: Any = None
    while True:
        points, offset = store.scroll(
            name, limit=page, offset=offset, with_payload=True, with_vectors=False
        )
        for point in points:
            yield dict(point.payload or {})
        if offset is None:
            return


def switch_alias(store: QdrantClient, alias: str, collection: str) -> str | None:
    """Point ``alias`` at ``collection`` in one step; the collection it named before."""
    before = next(
        (a.collection_name for a in store.get_aliases().aliases if a.alias_name == alias), None
    )
    operations: list[Any] = []
    if before is not None:
        operations.append(
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
        )
    operations.append(
        models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
        )
    )
    store.update_collection_aliases(change_aliases_operations=operations)
    return before
