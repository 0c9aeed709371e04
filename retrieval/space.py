"""Which sparse index space a collection's vectors are in.

A sparse query matches a stored vector only where their indices mean the same
token, so a collection built in one space (``tokenizer``: index = token id;
``hash``: sha256 of the id modulo SPARSE_INDEX_SPACE) and queried in another
returns nothing, without an error. ``bge-index`` records the service's space in
the collection's metadata (``SparseSpace.metadata``: ``sparse_mapping`` and
``sparse_index_space``); ``bge-search`` (and ``bge-eval``) compare it with the
space the service answers the query in and refuse a mismatch.

The space is bge-client's ``SparseSpace``, and a mismatch its ``SparseSpaceMismatch``
(a ``ValueError``), said here for a collection. Each tool's client holds to the
service's space at its first answer (bge-client's guard), so a service restarted in
another space mid-run is refused too. The client is not made with the collection's
space: it would ask the service for that mapping by name, and a service answering in
another space by default would be searched without a word; the tools refuse it instead.
"""

from __future__ import annotations

import sys

from bge_client import SparseSpace, SparseSpaceMismatch

__all__ = ["SparseSpace", "mismatch", "unrecorded", "warn"]

# What the service's SPARSE_TOKEN_MAPPING defaulted to before it became tokenizer.
_OLD_DEFAULT = "hash"


def mismatch(collection: str, stored: SparseSpace, service: SparseSpace) -> SparseSpaceMismatch:
    """The refusal: why a query would match nothing, and the two ways out."""
    if stored.mapping != service.mapping:
        setting = f"SPARSE_TOKEN_MAPPING={stored.mapping}"
        if stored.mapping == "hash":
            setting += f" and SPARSE_INDEX_SPACE={stored.index_space}"
    elif stored.mapping == "hash":
        setting = f"SPARSE_INDEX_SPACE={stored.index_space}"
    else:
        # Token ids of another vocabulary: another model's tokenizer.
        setting = (
            f"EMBEDDING_MODEL_NAME to the model it was built with ({stored.index_space} tokens)"
        )
    return SparseSpaceMismatch(
        f"collection `{collection}` holds sparse vectors in the {stored} space but the "
        f"service answers in the {service} space: no sparse query would match. Set "
        f"{setting} on the service, or re-index the collection with this service "
        f"(bge-index --from-collection {collection} --collection <new name>)",
        expected=stored,
        got=service,
    )


def unrecorded(collection: str, service: SparseSpace) -> str:
    """The warning for a collection built before bge-index recorded its space."""
    return (
        f"collection `{collection}` records no sparse index space (built before bge-index "
        f"recorded it): assuming it is the service's, {service}. A collection indexed while "
        f"the service's default was SPARSE_TOKEN_MAPPING={_OLD_DEFAULT} is in the "
        f"{_OLD_DEFAULT} space: if so, set SPARSE_TOKEN_MAPPING={_OLD_DEFAULT} on the "
        f"service or re-index (bge-index --from-collection {collection} --collection <new name>)"
    )


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
