"""Which sparse index space a collection's vectors are in.

A sparse query matches a stored vector only where their indices mean the same
token, so a collection built in one space (``tokenizer``: index = token id;
``hash``: sha256 of the id modulo SPARSE_INDEX_SPACE) and queried in another
returns nothing, without an error. ``bge-index`` records the service's space in
the collection's metadata; ``bge-search`` (and ``bge-eval``) compare it with the
space of the service's answer for the query and refuse a mismatch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retrieval.client import SparseVector

__all__ = ["SpaceMismatch", "SparseSpace", "mismatch", "unrecorded", "warn"]

# The collection metadata keys; the names /info and /health use for the same thing.
_MAPPING, _INDEX_SPACE = "sparse_mapping", "sparse_index_space"
# What the service's SPARSE_TOKEN_MAPPING defaulted to before it became tokenizer.
_OLD_DEFAULT = "hash"


class SpaceMismatch(ValueError):
    """The collection's sparse vectors and the service's are in different spaces."""


@dataclass(frozen=True, slots=True)
class SparseSpace:
    mapping: str
    index_space: int

    def __str__(self) -> str:
        return f"{self.mapping} (index space {self.index_space})"

    def metadata(self) -> dict[str, Any]:
        return {_MAPPING: self.mapping, _INDEX_SPACE: self.index_space}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> SparseSpace | None:
        mapping = (metadata or {}).get(_MAPPING)
        index_space = (metadata or {}).get(_INDEX_SPACE)
        if not isinstance(mapping, str) or not isinstance(index_space, int):
            return None
        return cls(mapping, index_space)

    @classmethod
    def of(cls, vector: SparseVector | None) -> SparseSpace | None:
        """The space a service's sparse answer says it is in."""
        if vector is None or vector.mapping is None or vector.index_space is None:
            return None
        return cls(vector.mapping, vector.index_space)


def mismatch(collection: str, stored: SparseSpace, service: SparseSpace) -> str:
    """Why a query would match nothing, and the two ways out."""
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
    return (
        f"collection `{collection}` holds sparse vectors in the {stored} space but the "
        f"service answers in the {service} space: no sparse query would match. Set "
        f"{setting} on the service, or re-index the collection with this service "
        f"(bge-index --from-collection {collection} --collection <new name>)"
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
