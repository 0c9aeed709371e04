"""How answers write vectors: JSON numbers, or base64 of little-endian float32.

Base64 is OpenAI's ``encoding_format``: exact, and about a quarter the size of
the numbers a float32 prints as (``0.012299999594688416``), which matters for
ColBERT's one vector per token.
"""

from __future__ import annotations

import base64
from typing import Literal

from engine.types import DenseMatrix

__all__ = ["VectorFormat", "vector_rows"]

VectorFormat = Literal["float", "base64"]


def vector_rows(matrix: DenseMatrix, encoding: VectorFormat) -> list[list[float] | str]:
    """Each row of ``matrix`` written as ``encoding`` asks."""
    if encoding == "float":
        rows: list[list[float] | str] = matrix.tolist()
        return rows
    little_endian = matrix.astype("<f4", copy=False)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in little_endian]
