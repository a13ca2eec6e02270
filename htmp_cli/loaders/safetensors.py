"""Safetensors: header validation and streaming reads, with no dependency on the safetensors package.

Layout: 8 bytes (little-endian u64) header length, the JSON header, then the data section. Every
header field is checked against the file before any tensor data is read, with the same rules the
safetensors library applies (contiguous, non-overlapping data ranges that exactly fill the data
section), so a file that library rejects is rejected here too.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders.dtypes import BITS_PER_ELEMENT, byte_size
from htmp_cli.loaders.entry import TensorEntry

# The safetensors library refuses headers above 100 MB; a real header is a few hundred KB.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    file_size: int
    header_bytes: bytes
    data_start: int
    tensors: tuple[TensorEntry, ...]
    metadata: dict[str, str]


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise CheckpointError(f"header names {key!r} twice")
        seen[key] = value
    return seen


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path: Path) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file; raise CheckpointError naming the fault."""
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: {file_size} bytes, too short for a safetensors header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
                )
            if 8 + header_len > file_size:
                raise CheckpointError(
                    f"{path}: header length {header_len} runs past the end of the "
                    f"{file_size}-byte file (truncated or not safetensors)"
                )
            header_bytes = handle.read(header_len)
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a .safetensors file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None

    try:
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is JSON but not an object")

    data_start = 8 + header_len
    data_size = file_size - data_start
    metadata = header.pop("__metadata__", None)  # JSON null is no metadata, as for the library
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")

    entries = [_validate_entry(path, name, info, data_start) for name, info in header.items()]
    _check_layout(path, entries, data_start, data_size)
    return SafetensorsHeader(
        path=path,
        file_size=file_size,
        header_bytes=header_bytes,
        data_start=data_start,
        tensors=tuple(entries),
        metadata=dict(metadata),
    )


def _validate_entry(path: Path, name: str, info: object, data_start: int) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: entry is not an object")
    missing = {"dtype", "shape", "data_offsets"} - info.keys()
    if missing:
        raise CheckpointError(f"{where}: missing field {sorted(missing)[0]!r}")
    # Other fields are ignored, as the safetensors library ignores them (found by the fuzzer: htmp
    # refused files that every framework loads).
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in BITS_PER_ELEMENT:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if any(d >= 2**63 for d in shape):  # no framework can make such a tensor, even an empty one
        raise CheckpointError(f"{where}: shape {shape!r} has a dimension beyond the signed 64-bit range")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} is not a [begin, end] pair with begin <= end")
    if dtype == "F4" and shape and shape[-1] % 2:
        # Stored in pairs along the last dimension (torch's float4_e2m1fn_x2): the safetensors library
        # refuses an odd one even for an empty tensor (found by the fuzzer).
        raise CheckpointError(f"{where}: an F4 tensor's last dimension must be even (its values come in pairs), "
                              f"got shape {shape}")
    n_elements = math.prod(shape)
    expected = byte_size(dtype, n_elements)
    if expected is None or expected != offsets[1] - offsets[0]:
        raise CheckpointError(
            f"{where}: shape {shape} of {dtype} needs {expected} bytes but data_offsets "
            f"span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(
        name=name,
        dtype=dtype,
        shape=tuple(shape),
        file=path,
        offset=data_start + offsets[0],
        nbytes=offsets[1] - offsets[0],
    )


def _check_layout(path: Path, entries: list[TensorEntry], data_start: int, data_size: int) -> None:
    cursor = data_start
    for entry in sorted(entries, key=lambda e: (e.offset, e.offset + e.nbytes)):
        if entry.offset < cursor:
            raise CheckpointError(f"{path}: tensor {entry.name!r} overlaps the tensor before it")
        if entry.offset > cursor:
            raise CheckpointError(f"{path}: tensor {entry.name!r} starts after a gap in the data section")
        cursor = entry.offset + entry.nbytes
        if cursor > data_start + data_size:
            raise CheckpointError(
                f"{path}: tensor {entry.name!r} ends at byte {cursor - data_start} of a "
                f"{data_size}-byte data section (file truncated?)"
            )
    if cursor != data_start + data_size:
        raise CheckpointError(
            f"{path}: tensors fill {cursor - data_start} bytes but the data section holds {data_size}"
        )
