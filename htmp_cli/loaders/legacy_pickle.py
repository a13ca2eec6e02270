"""A check of legacy (pre-1.6) PyTorch files before torch reads them: what their storages claim.

torch's legacy loader allocates every storage at the size its pickle declares, before it reads a
byte of data, so a file of a few KB can make it allocate gigabytes. This scan walks the same
pickles with Python's own unpickler, in which every global resolves to an inert stub (nothing named
in the file is ever imported or called), adds up the declared storage sizes, and lets the file
through only if they fit in the bytes that follow the pickles.

Layout: five pickles (magic number, protocol version, system info, the object, the storage keys),
then for each storage key an 8-byte element count and the data.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

# Bytes per element of the legacy typed storages; an unknown type counts as the widest.
_ELEMENT_BYTES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1,
}
_WIDEST = 16


class _Stub:
    """Whatever a global names in the file: callable, buildable, fillable, and inert."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> "_Stub":
        return _Stub(self.name + "()")

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageScan(pickle._Unpickler):  # the pure-Python unpickler: reads are bounded by the buffer
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, encoding="latin1")
        self.declared = 0

    def find_class(self, module: str, name: str) -> _Stub:
        return _Stub(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _Stub:
        # ('storage', storage type, key, location, element count[, view metadata])
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            kind, count = pid[1], pid[4]
            if not isinstance(count, int) or count < 0:
                raise ValueError(f"a storage declares {count!r} elements")
            width = _ELEMENT_BYTES.get(kind.name.rsplit(".", 1)[-1], _WIDEST) if isinstance(kind, _Stub) else _WIDEST
            self.declared += count * width
        return _Stub("storage")


def check_declared_sizes(data: bytes) -> str | None:
    """None if the storages a legacy file declares fit in its data section; otherwise why not.

    A file this scan cannot follow is left to torch, whose own reading of it fails the same way.
    """
    stream = io.BytesIO(data)
    try:
        declared = 0
        for index in range(5):
            scan = _StorageScan(stream)
            scan.load()
            declared += scan.declared
    except Exception:
        return None
    available = len(data) - stream.tell()
    if declared > available:
        return f"its storages declare {declared:,} bytes but only {available:,} follow its pickles (truncated or corrupt)"
    return None
