"""One tensor of a checkpoint, as its loader validated it, and the plain read of its bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders.dtypes import Decoder, stored_array


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies, in any format.

    `dtype` is the storage type: safetensors' names (F32, BF16, F8_E4M3, ...) for plain floats and
    integers in every format, GGUF's quantisation types (Q4_K, Q8_0, ...) for blocks of codes.
    `shape` is in PyTorch's order, (out, in, ...), whatever the file's own order.
    Offset-addressed formats (safetensors, GGUF) fill `offset` and `nbytes`; PyTorch files are read
    through torch, by `key`, the tensor's name inside its file before wrappers and prefixes came off.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int = 0
    nbytes: int = 0
    key: str = ""
    aliases: tuple[str, ...] = ()  # other names of the same tensor (tied weights of a model in memory)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def read_raw(entry: TensorEntry) -> np.ndarray:
    """The bytes of one tensor, read into a fresh buffer (not mapped, so resident memory stays bounded)."""
    buffer = np.empty(entry.nbytes, dtype=np.uint8)
    try:
        with open(entry.file, "rb", buffering=0) as handle:
            handle.seek(entry.offset)
            view = memoryview(buffer)
            done = 0
            while done < entry.nbytes:
                got = handle.readinto(view[done:])
                if not got:
                    raise CheckpointError(
                        f"{entry.file}: tensor {entry.name!r} is cut short at byte "
                        f"{done} of {entry.nbytes} (file changed or truncated)"
                    )
                done += got
    except OSError as err:
        raise CheckpointError(f"{entry.file}: cannot read tensor {entry.name!r}: {err.strerror or err}") from None
    return buffer


def read_stored(entry: TensorEntry) -> tuple[np.ndarray, Decoder | None]:
    """A plain-dtype tensor read by offset: its stored values, shaped, and their decoder to floats."""
    stored, decode = stored_array(read_raw(entry), entry.dtype)
    return stored.reshape(entry.shape), decode
