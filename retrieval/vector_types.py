"""What a collection's dense and ColBERT vectors are stored as, and how a text is embedded
to match: ``float32``, ``float16`` or ``uint8``, each side chosen on its own
(``bge-index --dense-dtype``, ``--colbert-dtype``), recorded in the collection's metadata
beside the sparse space so ``bge-search`` and ``bge-eval`` embed their queries the same way.

- ``float16``: the service's ``float16`` answer, stored as Qdrant's ``Datatype.FLOAT16``:
  half the bytes of float32, and no measurable loss (docs/benchmarks.md).
- ``uint8``: the service's ``uint8`` answer (per-vector scale, ``int8 + 128``, in
  [1, 255]), stored as ``Datatype.UINT8``, which keeps the integers as they are and scores
  them as they are. The collection's distance stays ``Cosine`` and the query is the
  service's ``uint8`` answer for it too, so query and documents are in the one space that
  Qdrant compares, the raw 0-255 integers. The +128 moves each vector off its direction,
  which costs quality (measured in docs/benchmarks.md); Qdrant's distances have no offset
  to subtract, and a query of int8 values would leave the 0-255 space the documents are
  stored in, so ``float16`` is the lossless choice and ``uint8`` the one for a quarter of
  the bytes.

When the two sides differ, one request gets the exact float32 vectors and each side is
converted here by the formulas docs/api.md gives for the service's formats (float16:
IEEE half of the float32 value; uint8: ``round(x / (max|x| / 127)) + 128``, half to
even, in float64), so a mixed collection holds what the service would have answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
from qdrant_client import models

from retrieval.client import Embedded, ServiceClient, VectorDtype

__all__ = ["DTYPES", "VectorDtype", "VectorTypes", "embed"]

DTYPES: tuple[VectorDtype, ...] = get_args(VectorDtype)
_DATATYPE: dict[VectorDtype, models.Datatype] = {
    "float32": models.Datatype.FLOAT32,
    "float16": models.Datatype.FLOAT16,
    "uint8": models.Datatype.UINT8,
}
BYTES_PER_VALUE: dict[VectorDtype, int] = {"float32": 4, "float16": 2, "uint8": 1}
# The collection metadata keys.
_DENSE, _COLBERT, _PRUNED = "dense_dtype", "colbert_dtype", "colbert_max_tokens"
_INT8_LIMIT = 127


@dataclass(frozen=True, slots=True)
class VectorTypes:
    """A collection's vector formats; ``colbert_max_tokens`` the ColBERT rows each
    document kept when indexed (None: all), for the record."""

    dense: VectorDtype = "float32"
    colbert: VectorDtype = "float32"
    colbert_max_tokens: int | None = None

    def datatype(self, side: VectorDtype) -> models.Datatype:
        return _DATATYPE[side]

    def metadata(self) -> dict[str, Any]:
        return {_DENSE: self.dense, _COLBERT: self.colbert, _PRUNED: self.colbert_max_tokens}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> VectorTypes | None:
        """None for a collection built before bge-index recorded them (all float32)."""
        found = metadata or {}
        dense, colbert = found.get(_DENSE), found.get(_COLBERT)
        if dense not in DTYPES or colbert not in DTYPES:
            return None
        pruned = found.get(_PRUNED)
        return cls(dense, colbert, pruned if isinstance(pruned, int) else None)

    def differs(self, other: VectorTypes, *, colbert: bool) -> str | None:
        """What ``other`` (asked for) would store differently from this (recorded)."""
        sides = [("dense", self.dense, other.dense)]
        if colbert:
            sides.append(("ColBERT", self.colbert, other.colbert))
        for name, have, want in sides:
            if have != want:
                return f"holds {have} {name} vectors, not {want}"
        if colbert and self.colbert_max_tokens != other.colbert_max_tokens:
            return (
                f"holds ColBERT rows pruned to {self.colbert_max_tokens or 'no limit'}, "
                f"not {other.colbert_max_tokens or 'no limit'}"
            )
        return None


async def embed(
    service: ServiceClient,
    texts: list[str],
    types: VectorTypes,
    *,
    sparse: bool,
    colbert: bool,
    prune: bool = False,
) -> list[Embedded]:
    """``texts`` embedded as ``types`` stores them, in one request; ``prune``: with the
    collection's ColBERT pruning (documents; a query keeps every row)."""
    same = not colbert or types.dense == types.colbert
    vectors = await service.embed(
        texts,
        sparse=sparse,
        colbert=colbert,
        dtype=types.dense if same else "float32",
        colbert_max_tokens=types.colbert_max_tokens if prune else None,
    )
    if same:
        return vectors
    return [
        Embedded(
            dense=converted(v.dense, types.dense),
            sparse=v.sparse,
            colbert=[converted(row, types.colbert) for row in v.colbert]
            if v.colbert is not None
            else None,
        )
        for v in vectors
    ]


def converted(values: list[float], dtype: VectorDtype) -> list[float]:
    """A float32 vector as the service writes it in ``dtype``, as numbers."""
    if dtype == "float32":
        return values
    floats = np.asarray(values, dtype=np.float32)
    if dtype == "float16":
        half: list[float] = floats.astype("<f2").tolist()
        return half
    wide = floats.astype(np.float64)
    scale = np.abs(wide).max(initial=0.0) / _INT8_LIMIT
    signed = np.clip(np.rint(wide / (scale or 1.0)), -_INT8_LIMIT, _INT8_LIMIT)
    shifted: list[float] = (signed + 128).tolist()
    return shifted
