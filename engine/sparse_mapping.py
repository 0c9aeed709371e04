"""Token-id lexical weights -> sparse vector indices, the same way for every backend.

``tokenizer``: index = token id. ``hash``: index =
``int(sha256(str(token_id)).hexdigest()[:8], 16) % index_space`` - byte for byte
the mapping of the bge_inference_service project, so vectors already indexed
with it stay valid. Colliding indices add their weights; indices come out unique
and ascending.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from engine.types import SparseVector, TokenWeights

__all__ = ["SparseMapper", "SparseMapping", "hashed_index"]

SparseMapping = Literal["tokenizer", "hash"]


def hashed_index(token_id: int, index_space: int) -> int:
    digest = hashlib.sha256(str(token_id).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % index_space


@dataclass(slots=True)
class SparseMapper:
    mapping: SparseMapping
    index_space: int
    # Token id -> hashed index; vocabularies are bounded (250k for bge-m3), hashing is not free.
    _hash_cache: dict[int, int] = field(default_factory=dict)

    def map(self, weights: TokenWeights) -> SparseVector:
        ids = weights.token_ids.astype(np.int64, copy=False)
        values = weights.weights.astype(np.float32, copy=False)
        if self.mapping == "hash":
            ids = self._hash(ids)
        indices, inverse = np.unique(ids, return_inverse=True)
        summed = np.zeros(indices.shape[0], dtype=np.float32)
        np.add.at(summed, inverse, values)
        return SparseVector(indices=indices, values=summed)

    def _hash(self, ids: NDArray[np.int64]) -> NDArray[np.int64]:
        cache = self._hash_cache
        out = np.empty_like(ids)
        for position, token_id in enumerate(ids.tolist()):
            index = cache.get(token_id)
            if index is None:
                index = cache[token_id] = hashed_index(token_id, self.index_space)
            out[position] = index
        return out
