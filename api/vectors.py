"""How answers write vectors: JSON numbers, base64 of little-endian float32 or
float16, or quantized integers (api/quantization.py).

Base64 is OpenAI's ``encoding_format``: exact, and about a quarter the size of
the numbers a float32 prints as (``0.012299999594688416``), which matters for
ColBERT's one vector per token. ``float16`` is base64 too, of the half-precision
bytes: as JSON numbers a float16 prints no shorter than the float32 it came from.
The integer formats are JSON lists of integers, as Cohere writes them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

from api import quantization
from engine.types import DenseMatrix

__all__ = [
    "QUANTIZED",
    "VECTOR_FORMATS",
    "VectorFormat",
    "VectorRow",
    "vector_rows",
    "vector_scales",
]

# `float` and `base64` are OpenAI's; the rest are this service's extension.
VectorFormat = Literal["float", "base64", "float16", "int8", "uint8", "binary", "ubinary"]
VECTOR_FORMATS: tuple[VectorFormat, ...] = get_args(VectorFormat)
# The formats that are integers, not floats: neither exact nor one number per dimension.
QUANTIZED: frozenset[VectorFormat] = frozenset({"int8", "uint8", "binary", "ubinary"})
# A vector as an answer writes it: numbers (integers for the quantized formats) or base64.
VectorRow = Sequence[float] | str


def _base64_rows(matrix: NDArray[np.generic]) -> list[VectorRow]:
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in matrix]


def vector_rows(matrix: DenseMatrix, encoding: VectorFormat) -> list[VectorRow]:
    """Each row of ``matrix`` written as ``encoding`` asks."""
    if encoding == "float":
        rows: list[VectorRow] = matrix.tolist()
        return rows
    if encoding == "base64":
        return _base64_rows(matrix.astype("<f4", copy=False))
    if encoding == "float16":
        return _base64_rows(quantization.float16(matrix))
    integers: NDArray[np.int8] | NDArray[np.uint8]
    if encoding == "int8":
        integers, _ = quantization.int8(matrix)
    elif encoding == "uint8":
        integers, _ = quantization.uint8(matrix)
    elif encoding == "binary":
        integers = quantization.binary(matrix)
    else:
        integers = quantization.ubinary(matrix)
    packed: list[VectorRow] = integers.tolist()
    return packed


def vector_scales(matrix: DenseMatrix, encoding: VectorFormat) -> list[float] | None:
    """Each row's int8 scale (``x ≈ q * scale``; uint8: ``(q - 128) * scale``) where
    ``encoding`` is int8 or uint8; None for the others, which need none."""
    if encoding not in ("int8", "uint8"):
        return None
    scales: list[float] = quantization.int8_scales(matrix).tolist()
    return scales
