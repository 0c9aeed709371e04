"""The quantized vector formats (api/quantization.py, api/vectors.py) against their
references: sentence-transformers' ``quantize_embeddings`` for the packed bits, numpy for
float16, and the documented int8 formula recomputed here."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from numpy.typing import NDArray
from sentence_transformers.util.quantization import quantize_embeddings

from api import quantization
from api.vectors import VECTOR_FORMATS, vector_rows, vector_scales


def unit_rows(count: int, dim: int, seed: int = 0) -> NDArray[np.float32]:
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    normalised: NDArray[np.float32] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


# 33 is not a multiple of 8: the last byte of a packed vector is padded with zero bits.
@pytest.mark.parametrize("dim", [1024, 384, 33, 8])
@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_bits_are_packed_as_sentence_transformers_packs_them(dim: int, precision: str) -> None:
    rows = unit_rows(5, dim)
    ours = quantization.binary(rows) if precision == "binary" else quantization.ubinary(rows)
    reference = quantize_embeddings(rows, precision)  # type: ignore[arg-type]
    assert isinstance(reference, np.ndarray)
    assert ours.dtype == reference.dtype == (np.int8 if precision == "binary" else np.uint8)
    assert ours.shape == (5, -(-dim // 8))
    np.testing.assert_array_equal(ours, reference)


def test_binary_is_ubinary_minus_128() -> None:
    rows = unit_rows(4, 64)
    signed = quantization.binary(rows).astype(np.int16)
    np.testing.assert_array_equal(signed + 128, quantization.ubinary(rows))


def test_int8_is_the_documented_formula() -> None:
    rows = unit_rows(6, 1024)
    wide = rows.astype(np.float64)
    scale = np.abs(wide).max(axis=1) / 127
    want = np.rint(wide / scale[:, None]).astype(np.int8)
    got, scales = quantization.int8(rows)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(scales, scale)
    assert got.dtype == np.int8
    # The largest component is ±127 and nothing is clipped: -128 is never used.
    assert (np.abs(got.astype(np.int16)).max(axis=1) == 127).all()
    assert got.min() >= -127
    # q * scale is x within half a step.
    assert (np.abs(got * scales[:, None] - wide) <= scales[:, None] / 2 + 1e-12).all()


def test_int8_keeps_the_cosine() -> None:
    rows = unit_rows(20, 384)
    quantized = quantization.int8(rows)[0].astype(np.float64)
    quantized /= np.linalg.norm(quantized, axis=1, keepdims=True)
    np.testing.assert_allclose(quantized @ quantized.T, rows @ rows.T, atol=0.01)


def test_int8_depends_on_the_vector_alone() -> None:
    rows = unit_rows(8, 64)
    alone = np.concatenate([quantization.int8(rows[i : i + 1])[0] for i in range(8)])
    np.testing.assert_array_equal(alone, quantization.int8(rows)[0])


def test_a_zero_vector_quantizes_to_zero() -> None:
    zero = np.zeros((1, 16), dtype=np.float32)
    values, scales = quantization.int8(zero)
    assert not values.any() and scales.tolist() == [0.0]
    assert (quantization.uint8(zero)[0] == 128).all()


def test_uint8_is_int8_plus_128() -> None:
    rows = unit_rows(5, 256)
    signed, signed_scales = quantization.int8(rows)
    unsigned, unsigned_scales = quantization.uint8(rows)
    assert unsigned.dtype == np.uint8
    np.testing.assert_array_equal(unsigned.astype(np.int16), signed.astype(np.int16) + 128)
    np.testing.assert_array_equal(unsigned_scales, signed_scales)
    assert unsigned.min() >= 1


def test_float16_is_numpy_half_little_endian() -> None:
    rows = unit_rows(3, 40)
    (row, *_) = vector_rows(rows, "float16")
    assert isinstance(row, str)
    decoded = np.frombuffer(base64.b64decode(row), "<f2")
    np.testing.assert_array_equal(decoded, rows[0].astype(np.float16))


# Bytes per vector, as docs/api.md states them, for bge-m3's 1024 and 33 dimensions.
@pytest.mark.parametrize(
    ("encoding", "size_1024", "size_33"),
    [
        ("base64", 4096, 132),
        ("float16", 2048, 66),
        ("int8", 1024, 33),
        ("uint8", 1024, 33),
        ("binary", 128, 5),
        ("ubinary", 128, 5),
    ],
)
def test_bytes_per_vector(encoding: str, size_1024: int, size_33: int) -> None:
    assert encoding in VECTOR_FORMATS
    for dim, size in ((1024, size_1024), (33, size_33)):
        (row,) = vector_rows(unit_rows(1, dim), encoding)  # type: ignore[arg-type]
        stored = len(base64.b64decode(row)) if isinstance(row, str) else len(row)
        assert stored == size


def test_float_and_base64_rows_are_as_before() -> None:
    rows = unit_rows(2, 16)
    assert vector_rows(rows, "float") == rows.tolist()
    assert vector_rows(rows, "base64") == [
        base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in rows
    ]


@pytest.mark.parametrize("encoding", VECTOR_FORMATS)
def test_only_int8_and_uint8_carry_a_scale(encoding: str) -> None:
    scales = vector_scales(unit_rows(2, 16), encoding)  # type: ignore[arg-type]
    assert (scales is not None) == (encoding in ("int8", "uint8"))
