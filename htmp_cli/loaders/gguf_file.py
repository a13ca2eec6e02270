"""GGUF (llama.cpp's format): a header parser that never decodes the vocabulary, and dequantised reads.

Layout (little-endian): magic `GGUF`, version (2 or 3), tensor count, key-value count, the key-value
pairs, the tensor table (name, dims, ggml type, offset), padding to `general.alignment`, the data.
A model's key-value section carries its tokenizer: 100k+ strings. They are stepped over by their
length prefixes, never decoded into Python objects, so opening a file costs milliseconds where the
gguf package's reader builds every token (seconds). Every count, length, shape and offset is
checked against the file's size before it is used.

GGUF lists dims innermost first (ggml's ne[0] is the row length); shapes here are reversed into
PyTorch's (out, in) order, which is also the C-order layout of the data.

A quantised tensor is read as its codes (a `QuantizedMatrix`) and dequantised a slice at a time:
the Gram matrix is accumulated from row blocks of it, so memory holds the codes, one float block
and the Gram matrix, never the whole float32 matrix (a 262144 x 640 embedding is 671 MB of it).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders.dtypes import QUANTIZED_DTYPES, Decoder
from htmp_cli.loaders.entry import TensorEntry, read_raw, read_stored

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
_HEADER_SAMPLE = 1 << 16  # bytes of the key-value section that go into the fingerprint

# ggml type id -> (name, elements per block, bytes per block); checked against the gguf package in tests.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
_BLOCKS = {name: (block, size) for name, block, size in GGML_TYPES.values()}

# GGUF value types: id -> struct format of a scalar (strings and arrays are handled apart).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_LONG_STRING = 256  # longer metadata strings (chat templates) are summarised, not kept
# Elements dequantised per call of the gguf package, whose temporaries are two to three times its
# float32 output (and all of them at once: it concatenates the pieces of a call only at its end).
_DEQUANTIZE_CHUNK = 2**16


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    file_size: int
    data_start: int
    metadata: dict[str, object]
    tensors: tuple[TensorEntry, ...]
    header_sample: bytes

    @property
    def split_count(self) -> int:
        value = self.metadata.get("split.count", 1)
        return value if isinstance(value, int) and value > 0 else 1


class _Cursor:
    """Bounds-checked reads from a mapped file."""

    def __init__(self, path: Path, buf: mmap.mmap | bytes, size: int) -> None:
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CheckpointError(f"{self.path}: {what} runs past the end of the {self.size}-byte file (truncated?)")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: {what} is not valid UTF-8") from None

    def skip_strings(self, count: int, what: str) -> None:
        buf, pos, size = self.buf, self.pos, self.size
        unpack_from = struct.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise CheckpointError(f"{self.path}: {what} runs past the end of the file (truncated?)")
            pos += 8 + unpack_from("<Q", buf, pos)[0]
        if pos > size:
            raise CheckpointError(f"{self.path}: {what} runs past the end of the file (truncated?)")
        self.pos = pos


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse and validate a GGUF file's header and tensor table; read no tensor data."""
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:
            if file_size < 24:
                raise CheckpointError(f"{path}: {file_size} bytes, too short for a GGUF header")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(path, buf, file_size)
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a .gguf file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None


def _parse(path: Path, buf: mmap.mmap, file_size: int) -> GGUFHeader:
    cur = _Cursor(path, buf, file_size)
    if bytes(buf[:4]) != MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
    cur.pos = 4
    version = cur.unpack("<I", "version")
    if version not in (2, 3):
        if struct.unpack(">I", struct.pack("<I", version))[0] in (2, 3):
            raise CheckpointError(f"{path}: big-endian GGUF is not supported")
        raise CheckpointError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "key-value count")
    # Each key-value pair takes at least 8 + 4 + 1 bytes, each tensor-table row at least 8 + 4 + 8 + 4 + 8.
    if n_kv * 13 > file_size or n_tensors * 32 > file_size:
        raise CheckpointError(f"{path}: header claims {n_tensors} tensors and {n_kv} key-value pairs, "
                              f"more than a {file_size}-byte file can hold")
    metadata: dict[str, object] = {}
    for k in range(n_kv):
        key = cur.string(f"key {k}")
        if key in metadata:
            raise CheckpointError(f"{path}: metadata key {key!r} appears twice")
        metadata[key] = _value(cur, cur.unpack("<I", f"type of {key!r}"), key)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(f"{path}: general.alignment {alignment!r} is not a power of two")
    header_end_kv = cur.pos

    infos = []
    names: set[str] = set()
    for t in range(n_tensors):
        name = cur.string(f"name of tensor {t}")
        if name in names:
            raise CheckpointError(f"{path}: tensor {name!r} appears twice")
        names.add(name)
        n_dims = cur.unpack("<I", f"tensor {name!r} rank")
        if not 1 <= n_dims <= MAX_DIMS:
            raise CheckpointError(f"{path}: tensor {name!r} has {n_dims} dims (1 to {MAX_DIMS} allowed)")
        dims = [cur.unpack("<Q", f"tensor {name!r} dims") for _ in range(n_dims)]
        type_id = cur.unpack("<I", f"tensor {name!r} type")
        offset = cur.unpack("<Q", f"tensor {name!r} offset")
        infos.append((name, dims, type_id, offset))
    data_start = -(-cur.pos // alignment) * alignment
    if data_start > file_size:
        raise CheckpointError(f"{path}: data section starts at byte {data_start}, past the end of the file")

    entries = [_entry(path, name, dims, type_id, offset, alignment, data_start, file_size)
               for name, dims, type_id, offset in infos]
    end = data_start
    for entry in sorted(entries, key=lambda e: e.offset):
        if entry.offset < end:
            raise CheckpointError(f"{path}: tensor {entry.name!r} overlaps the tensor before it")
        end = entry.offset + entry.nbytes
    return GGUFHeader(path=path, version=version, file_size=file_size, data_start=data_start, metadata=metadata,
                      tensors=tuple(entries), header_sample=bytes(buf[: min(header_end_kv, _HEADER_SAMPLE)])
                      + bytes(buf[header_end_kv : cur.pos]))


def _value(cur: _Cursor, type_id: int, key: str) -> object:
    if type_id in _SCALARS:
        return cur.unpack(_SCALARS[type_id], f"value of {key!r}")
    if type_id == _STRING:
        n = cur.unpack("<Q", f"value of {key!r}")
        cur.need(n, f"value of {key!r}")
        if n > _LONG_STRING:
            cur.pos += n
            return f"<{n}-byte string>"
        cur.pos -= 8
        return cur.string(f"value of {key!r}")
    if type_id == _ARRAY:
        count = _skip_array(cur, key, nested_ok=True)
        return f"<array of {count}>"
    raise CheckpointError(f"{cur.path}: metadata {key!r} has unknown value type {type_id}")


def _skip_array(cur: _Cursor, key: str, nested_ok: bool) -> int:
    """Step over an array value (one level of arrays of arrays allowed); returns its length."""
    item_type = cur.unpack("<I", f"array type of {key!r}")
    count = cur.unpack("<Q", f"array length of {key!r}")
    if item_type in _SCALARS:
        size = struct.calcsize(_SCALARS[item_type])
        cur.need(count * size, f"array {key!r}")
        cur.pos += count * size
    elif item_type == _STRING:
        if count * 8 > cur.size:
            raise CheckpointError(f"{cur.path}: array {key!r} claims {count} strings, more than the file holds")
        cur.skip_strings(count, f"array {key!r}")
    elif item_type == _ARRAY and nested_ok:
        if count * 12 > cur.size:
            raise CheckpointError(f"{cur.path}: array {key!r} claims {count} arrays, more than the file holds")
        for _ in range(count):
            _skip_array(cur, key, nested_ok=False)
    elif item_type == _ARRAY:
        raise CheckpointError(f"{cur.path}: array in {key!r} nests deeper than htmp reads")
    else:
        raise CheckpointError(f"{cur.path}: array {key!r} has unknown item type {item_type}")
    return count


def _entry(path: Path, name: str, dims: list[int], type_id: int, offset: int, alignment: int,
           data_start: int, file_size: int) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if type_id not in GGML_TYPES:
        raise CheckpointError(f"{where}: unknown ggml type {type_id}")
    type_name, block, block_bytes = GGML_TYPES[type_id]
    if dims[0] % block:
        raise CheckpointError(f"{where}: row length {dims[0]} is not a multiple of the {type_name} block size {block}")
    n_elements = math.prod(dims)
    nbytes = n_elements // block * block_bytes
    if offset % alignment:
        raise CheckpointError(f"{where}: offset {offset} is not a multiple of the alignment {alignment}")
    if data_start + offset + nbytes > file_size:
        raise CheckpointError(f"{where}: data ends at byte {data_start + offset + nbytes} of a "
                              f"{file_size}-byte file (truncated?)")
    return TensorEntry(name=name, dtype=type_name, shape=tuple(reversed(dims)), file=path,
                       offset=data_start + offset, nbytes=nbytes)


@dataclass(frozen=True)
class QuantizedMatrix:
    """A block-quantised tensor as its codes, `shape` in elements; floats only on request.

    Indexing the leading axes (rows, experts) selects codes; a slice of the last axis selects
    whole quantisation blocks where it can and dequantises the few it cuts otherwise.
    `dequantize()` (and np.asarray) gives the float32 values, exactly the gguf package's.
    """

    codes: np.ndarray  # uint8, (*shape[:-1], shape[-1] / block * block_bytes)
    qtype: str
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> QuantizedMatrix | np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > self.ndim or any(k is Ellipsis or k is None for k in key):
            return self.dequantize()[key]
        lead = key[: self.ndim - 1]
        part = self._rows(lead) if lead else self
        if len(key) < self.ndim:
            return part
        return part._columns(key[-1])

    def _rows(self, lead: tuple[Any, ...]) -> QuantizedMatrix:
        codes = self.codes[lead]
        return QuantizedMatrix(codes=codes, qtype=self.qtype, shape=(*codes.shape[:-1], self.shape[-1]))

    def _columns(self, key: Any) -> QuantizedMatrix | np.ndarray:
        cols = self.shape[-1]
        if not isinstance(key, slice) or key.step not in (None, 1):
            return self.dequantize()[..., key]
        start, stop, _ = key.indices(cols)
        stop = max(start, stop)
        block, block_bytes = _BLOCKS[self.qtype]
        first, last = start // block, -(-stop // block)  # the blocks that hold [start, stop)
        part = QuantizedMatrix(codes=self.codes[..., first * block_bytes : last * block_bytes], qtype=self.qtype,
                               shape=(*self.shape[:-1], (last - first) * block))
        if start % block == 0 and stop % block == 0:  # rows hold whole blocks, so this is all of them
            return part
        return part.dequantize()[..., start - first * block : stop - first * block]

    def reshape(self, *shape: Any) -> np.ndarray:
        return self.dequantize().reshape(*shape)

    def dequantize(self) -> np.ndarray:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        qtype = GGMLQuantizationType[self.qtype]
        cols = self.shape[-1]
        rows = self.codes.reshape(math.prod(self.shape[:-1]), self.codes.shape[-1])
        out = np.empty((rows.shape[0], cols), dtype=np.float32)
        if out.size == 0:  # the gguf package cannot reshape empty rows
            return out.reshape(self.shape)
        step = max(1, _DEQUANTIZE_CHUNK // max(cols, 1))
        for start in range(0, rows.shape[0], step):
            # As one row of blocks: the package then decodes the chunk in one call, where it would
            # loop in Python over groups of 16 rows (4 s of a 262144 x 640 matrix's 5).
            chunk = rows[start : start + step]
            out[start : start + step] = dequantize(chunk.reshape(-1), qtype).reshape(chunk.shape[0], cols)
        return out.reshape(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self.dequantize()
        return values if dtype is None else values.astype(dtype, copy=False)


def dequantize_part(part: QuantizedMatrix | np.ndarray) -> np.ndarray:
    """The decoder of quantised tensors: float32 values of a part of one (floats pass through)."""
    if isinstance(part, QuantizedMatrix):
        return part.dequantize()
    return np.asarray(part, dtype=np.float32)


def read_stored_gguf(entry: TensorEntry) -> tuple[np.ndarray | QuantizedMatrix, Decoder | None]:
    """A GGUF tensor: plain floats as stored (with their decoder), quantised ones as their codes,
    dequantised by the decoder a part at a time."""
    if entry.dtype not in QUANTIZED_DTYPES:
        return read_stored(entry)
    try:
        import gguf.quants  # noqa: F401
    except ImportError:
        raise CheckpointError(f"{entry.file}: dequantising {entry.dtype} needs the gguf package: pip install gguf") from None
    block, block_bytes = _BLOCKS[entry.dtype]
    codes = read_raw(entry).reshape(*entry.shape[:-1], entry.shape[-1] // block * block_bytes)
    return QuantizedMatrix(codes=codes, qtype=entry.dtype, shape=tuple(entry.shape)), dequantize_part
