"""Dense vectors (and ColBERT rows, each a vector of its own) made smaller, per request:
float16, int8, uint8, binary and ubinary.

Pure numpy, one function per format; each takes a float32 matrix (one vector per row)
and returns one row per vector. What is stored per vector of ``d`` dimensions:

==========  ========================  ==============================================
format      bytes per vector          values
==========  ========================  ==============================================
float16     ``2 * d``                 the float32 values rounded to IEEE half
int8        ``d``                     ``round(x / scale)`` in [-127, 127]
uint8       ``d``                     the int8 values + 128, in [1, 255]
binary      ``ceil(d / 8)``           bits of ``x > 0`` packed, each byte - 128 (int8)
ubinary     ``ceil(d / 8)``           bits of ``x > 0`` packed (uint8)
==========  ========================  ==============================================

**Binary.** The bits are packed as Cohere and sentence-transformers'
``quantize_embeddings`` pack them: ``numpy.packbits(x > 0, axis=-1)``, most
significant bit first, the last byte padded with zero bits when ``d`` is not a
multiple of 8; ``binary`` is that byte minus 128 as a signed int8, ``ubinary`` the byte
itself. Search them by Hamming distance (or the dot product of the ±1 vectors, which
ranks the same).

**int8 and uint8: per-vector scaling, not calibration ranges.** Each vector is scaled
by its own largest magnitude: ``scale = max|x| / 127``, ``q = round(x / scale)``
(half to even, computed in float64), so the largest component is ±127 and no value is
ever clipped; ``x ≈ q * scale``. uint8 is the same integers + 128, the relation
sentence-transformers' ``int8`` and ``uint8`` have for the same ranges. The other
design, per-dimension ranges computed from a corpus and shipped with each model (what
sentence-transformers does with ``ranges`` or ``calibration_embeddings``, and what it
does with the batch itself when given neither), was not chosen because:

- the answer depends on the vector alone: the same text gets the same integers in any
  batch, on any model folder, with no calibration file to compute, ship, version and
  keep in step with the weights (sentence-transformers without ranges calibrates on the
  request's own batch, so one text's integers change with its neighbours);
- a per-vector scale does not change a vector's direction, so cosine similarity on the
  integers equals the float cosine up to rounding. Measured on the pydoc BEIR set
  (``bench/quantization_recall.py``, docs/benchmarks.md), cosine on these integers kept
  float32's nDCG@10 and 99 % of its top 10; on corpus-calibrated integers, which are
  offset from zero per dimension, 72 % of the top 10.

The scale is not needed to rank by cosine. Cohere's answer has no place for it and
Cohere's clients expect plain integer lists, so Cohere's routes answer the integers
only; this service's own answers carry it beside the vector (``scale`` on
``/v1/embeddings``, ``dense_scale`` and ``colbert_scales`` on ``/v1/hybrid-embeddings``)
for a client that wants ``q * scale`` back. Rank int8 vectors by cosine (Qdrant's
``Cosine``), not by the raw dot product, which the per-vector scale changes; uint8's +128
offset moves every vector off its direction, so subtract 128 before comparing, or use int8.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from engine.types import DenseMatrix

__all__ = [
    "INT8_LIMIT",
    "binary",
    "float16",
    "int8",
    "int8_scales",
    "ubinary",
    "uint8",
]

# Symmetric: -128 is never used, so negating a vector negates its integers exactly.
INT8_LIMIT = 127


def float16(matrix: DenseMatrix) -> NDArray[np.float16]:
    """Each value rounded to little-endian IEEE half precision (overflow is ±inf; unit
    vectors never come near 65504)."""
    return matrix.astype("<f2")


def int8_scales(matrix: DenseMatrix) -> NDArray[np.float64]:
    """Each row's scale, ``max|x| / 127``; 0 for a zero vector."""
    peak: NDArray[np.float64] = np.abs(matrix.astype(np.float64)).max(axis=-1)
    return peak / INT8_LIMIT


def int8(matrix: DenseMatrix) -> tuple[NDArray[np.int8], NDArray[np.float64]]:
    """Each row as ``round(x / scale)`` in [-127, 127], and the scales (``x ≈ q * scale``).

    In float64 so a client that recomputes it from the float answer gets the same
    integers; a zero vector stays zero.
    """
    scales = int8_scales(matrix)
    wide = matrix.astype(np.float64)
    divisor = np.where(scales > 0, scales, 1.0)[..., np.newaxis]
    quantized = np.clip(np.rint(wide / divisor), -INT8_LIMIT, INT8_LIMIT)
    return quantized.astype(np.int8), scales


def uint8(matrix: DenseMatrix) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """The int8 values + 128, in [1, 255], and the same scales (``x ≈ (q - 128) * scale``)."""
    signed, scales = int8(matrix)
    return (signed.astype(np.int16) + 128).astype(np.uint8), scales


def ubinary(matrix: DenseMatrix) -> NDArray[np.uint8]:
    """The bits of ``x > 0``, eight dimensions a byte, most significant first."""
    return np.packbits(matrix > 0, axis=-1)


def binary(matrix: DenseMatrix) -> NDArray[np.int8]:
    """The ubinary bytes - 128, as signed int8 (Cohere's and sentence-transformers')."""
    return (ubinary(matrix).astype(np.int16) - 128).astype(np.int8)
