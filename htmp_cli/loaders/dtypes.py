"""Safetensors dtypes: their sizes and exact conversion of raw bytes to numpy floats.

Every floating-point dtype converts exactly: bfloat16 and the two float8 formats become float32
(which holds each of their values exactly), float16, float32 and float64 keep their numpy type.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Decoder = Callable[[np.ndarray], np.ndarray]

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
INTEGER_DTYPES = ("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64")
# GGUF's block-quantised types that the gguf package dequantises (checked against it in tests).
QUANTIZED_DTYPES = (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS",
    "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "IQ1_M", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4",
)
# Other dtypes the safetensors format knows (F8_E8M0, C64, F4, F6_E2M3, F6_E3M2) are not converted:
# such tensors are skipped with a reason.

# numpy's dtype names in the safetensors names every loader uses (in-memory arrays, ONNX, HDF5).
NUMPY_DTYPE_NAMES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bool": "BOOL", "uint8": "U8", "int8": "I8",
    "uint16": "U16", "int16": "I16", "uint32": "U32", "int32": "I32", "uint64": "U64", "int64": "I64",
    "complex64": "C64",
}

BITS_PER_ELEMENT = {
    "F64": 64, "F32": 32, "F16": 16, "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8,
    "BOOL": 8, "U8": 8, "I8": 8, "U16": 16, "I16": 16, "U32": 32, "I32": 32, "U64": 64, "I64": 64,
    "F8_E8M0": 8, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


def _float8_table(exponent_bits: int, mantissa_bits: int, *, finite_only: bool) -> np.ndarray:
    """Value of every one of the 256 codes of an IEEE-like float8 format, as float32.

    `finite_only` is the OCP "fn" variant (E4M3): no infinities, and only the all-ones code of
    each sign is NaN; otherwise (E5M2) the top exponent holds infinities and NaNs as in IEEE 754.
    """
    bias = (1 << (exponent_bits - 1)) - 1
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exponent = (codes >> mantissa_bits) & ((1 << exponent_bits) - 1)
    mantissa = codes & ((1 << mantissa_bits) - 1)
    scale = float(1 << mantissa_bits)
    subnormal = mantissa / scale * 2.0 ** (1 - bias)
    normal = (1.0 + mantissa / scale) * 2.0 ** (exponent - bias)
    values = sign * np.where(exponent == 0, subnormal, normal)
    top = (1 << exponent_bits) - 1
    if finite_only:
        values[(exponent == top) & (mantissa == (1 << mantissa_bits) - 1)] = np.nan
    else:
        values[(exponent == top) & (mantissa == 0)] = sign[(exponent == top) & (mantissa == 0)] * np.inf
        values[(exponent == top) & (mantissa != 0)] = np.nan
    return values.astype(np.float32)


F8_E4M3_VALUES = _float8_table(4, 3, finite_only=True)
F8_E5M2_VALUES = _float8_table(5, 2, finite_only=False)


def byte_size(dtype: str, n_elements: int) -> int | None:
    """Bytes taken by `n_elements` of `dtype`, or None when they do not fill whole bytes."""
    bits = BITS_PER_ELEMENT[dtype] * n_elements
    return bits // 8 if bits % 8 == 0 else None


def decode_bf16(codes: np.ndarray) -> np.ndarray:
    # bfloat16 is the top half of a float32: widen by shifting into the high bits.
    wide = codes.astype(np.uint32)
    wide <<= 16
    return wide.view(np.float32)


def stored_array(raw: np.ndarray, dtype: str) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray] | None]:
    """A view of a uint8 buffer in the dtype's storage type, and the decoder that makes floats of it.

    F64, F32 and F16 are numpy floats already (no decoder). BF16 and float8 stay as their codes
    (uint16, uint8) until decoded block by block: a bf16 matrix then never exists in memory as a
    whole float32 copy, only as blocks of one.
    """
    if dtype == "F64":
        return raw.view("<f8"), None
    if dtype == "F32":
        return raw.view("<f4"), None
    if dtype == "F16":
        return raw.view("<f2"), None
    if dtype == "BF16":
        return raw.view("<u2"), decode_bf16
    if dtype == "F8_E4M3":
        return raw, F8_E4M3_VALUES.take
    if dtype == "F8_E5M2":
        return raw, F8_E5M2_VALUES.take
    raise ValueError(f"dtype {dtype} is not a supported floating-point dtype")
