"""Keras weights: Keras 3 `.keras` archives and `.weights.h5` files, and legacy HDF5 `.h5` files.

Read with h5py, one dataset at a time; nothing a file holds is ever run. A `.keras` archive's
`config.json` is parsed as JSON for the layers' class names only (a Lambda layer's code is never
deserialised), and its `model.weights.h5` is read in place inside the zip when stored
uncompressed. Keras stores a Dense kernel (in, out) and a conv kernel (k..., in, out): both are
given in PyTorch's order, (out, in) and (out, in, k...); embeddings are (vocabulary, dim) already.
Optimizer state saved beside the weights is skipped, with why.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders.dtypes import NUMPY_DTYPE_NAMES, Decoder
from htmp_cli.loaders.entry import TensorEntry
from htmp_cli.loaders.matrices import SkippedTensor

WEIGHTS_MEMBER = "model.weights.h5"
# The order of each layer class's variables in a Keras 3 weights file (it stores them by index).
_VARIABLES = {
    **{name: ("kernel", "bias") for name in ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
                                             "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D")},
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "Embedding": ("embeddings",),
    "LayerNormalization": ("gamma", "beta"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}
_MAX_CONFIG_BYTES = 16 * 2**20


@dataclass(frozen=True)
class KerasModel:
    format: str
    tensors: tuple[TensorEntry, ...]
    skipped: tuple[SkippedTensor, ...]
    reader: Callable[[TensorEntry], tuple[np.ndarray, Decoder | None]]
    notes: tuple[str, ...]


def read_keras(path: Path) -> KerasModel:
    try:
        import h5py
    except ImportError:
        raise CheckpointError(f"{path}: Keras weights need the h5py package: pip install 'htmp-cli[keras]'") from None
    archive = zipfile.is_zipfile(path)
    classes = _layer_classes(path) if archive else {}
    try:
        with _weights_file(path, archive) as handle, h5py.File(handle, "r") as h5:
            if "model_weights" in h5 or "layer_names" in h5.attrs:
                fmt, found = "keras-h5-legacy", list(_legacy(h5))
            elif "layers" in h5 or "vars" in h5:
                fmt, found = ("keras" if archive else "keras-weights-h5"), list(_keras3(h5, classes))
            else:
                raise CheckpointError(f"{path}: an HDF5 file, but not Keras weights (no layers, vars or model_weights)")
            entries, skipped = [], []
            for name, key, dataset, transpose in found:
                entry, reason = _entry(path, name, key, dataset, transpose)
                if reason is None:
                    entries.append(entry)
                else:
                    skipped.append(SkippedTensor(name, entry.shape, entry.dtype, reason))
    except CheckpointError:
        raise
    except Exception as err:  # h5py's errors for a damaged file: OSError, KeyError, ValueError, TypeError
        raise CheckpointError(f"{path}: not readable Keras weights ({type(err).__name__}: {str(err)[:120]})") from None
    layouts = {key: transpose for _, key, _, transpose in found}

    def read(entry: TensorEntry) -> tuple[np.ndarray, Decoder | None]:
        try:
            with _weights_file(path, archive) as handle, h5py.File(handle, "r") as h5:
                values = np.asarray(h5[entry.key][()])
        except Exception as err:
            raise CheckpointError(f"{path}: tensor {entry.name!r} cannot be read ({type(err).__name__}: "
                                  f"{str(err)[:120]})") from None
        return _to_torch_order(values, layouts[entry.key]), None

    notes = [f"Keras weights ({fmt}), read with h5py; nothing in the file is run"]
    return KerasModel(fmt, tuple(entries), tuple(skipped), read, tuple(notes))


def _entry(path: Path, name: str, key: str, dataset: Any, transpose: bool) -> tuple[TensorEntry, str | None]:
    import h5py

    if not isinstance(dataset, h5py.Dataset):
        return TensorEntry(name=name, dtype="group", shape=(), file=path, key=key), "an HDF5 group where a weight was expected"
    shape = tuple(int(d) for d in dataset.shape)
    dtype = NUMPY_DTYPE_NAMES.get(str(dataset.dtype), f"HDF5 {dataset.dtype}")
    shown = _torch_shape(shape) if transpose else shape
    return TensorEntry(name=name, dtype=dtype, shape=shown, file=path, key=key), None


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) < 2:
        return shape
    return (shape[-1], shape[-2], *shape[:-2])


def _to_torch_order(values: np.ndarray, transpose: bool) -> np.ndarray:
    """(in, out) -> (out, in), (k..., in, out) -> (out, in, k...): views, no copy."""
    if not transpose or values.ndim < 2:
        return values
    return np.transpose(values, (values.ndim - 1, values.ndim - 2, *range(values.ndim - 2)))


def _keras3(h5: Any, classes: dict[str, str]) -> Iterator[tuple[str, str, Any, bool]]:
    """(name, dataset path, dataset, whether Keras's order differs from PyTorch's) of a Keras 3 file."""
    import h5py

    def walk(group: Any, prefix: str) -> Iterator[tuple[str, str, Any, bool]]:
        for key in group:
            item = group[key]
            if key == "vars" and isinstance(item, h5py.Group):
                layer = _text(item.attrs.get("name", ""))
                names = _VARIABLES.get(classes.get(layer, ""), ())
                for index in sorted(item, key=lambda k: (len(k), k)):
                    var = names[int(index)] if index.isdigit() and int(index) < len(names) else index
                    yield f"{prefix}{var}", item[index].name, item[index], var != "embeddings"
            elif isinstance(item, h5py.Group) and key != "optimizer":
                layer = _text(item["vars"].attrs.get("name", key)) if "vars" in item else key
                yield from walk(item, prefix if key == "layers" else f"{prefix}{layer}.")

    yield from walk(h5, "")


def _legacy(h5: Any) -> Iterator[tuple[str, str, Any, bool]]:
    """The same for a legacy HDF5 file: layer_names, and each layer's weight_names."""
    root = h5["model_weights"] if "model_weights" in h5 else h5
    for layer in _strings(root.attrs.get("layer_names", [])):
        group = root[layer]
        for weight in _strings(group.attrs.get("weight_names", [])):
            name = weight.split(":")[0].replace("/", ".")
            yield name, group[weight].name, group[weight], not name.endswith("embeddings")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _strings(values: Any) -> list[str]:
    return [_text(v) for v in np.atleast_1d(values) if str(v)]


def _layer_classes(path: Path) -> dict[str, str]:
    """Each layer's name -> its class, from a .keras archive's config.json (JSON, nothing run)."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > _MAX_CONFIG_BYTES:
                return {}
            config = json.loads(archive.read(info))
    except (KeyError, OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError):
        return {}
    classes: dict[str, str] = {}

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            inner = node.get("config")
            if isinstance(node.get("class_name"), str) and isinstance(inner, dict) and isinstance(inner.get("name"), str):
                classes.setdefault(inner["name"], node["class_name"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return classes


class _Range(io.RawIOBase):
    """A read-only window [start, start + size) of a file: a stored zip member, read in place."""

    def __init__(self, path: Path, start: int, size: int) -> None:
        self._file, self._start, self._size, self._pos = open(path, "rb"), start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset, io.SEEK_END: self._size + offset}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = max(0, min(len(buffer), self._size - self._pos))
        self._file.seek(self._start + self._pos)
        got = self._file.readinto(memoryview(buffer)[:want])
        self._pos += got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


def _weights_file(path: Path, archive: bool) -> Any:
    """The HDF5 weights as a file object: the file itself, or the archive's member."""
    if not archive:
        return open(path, "rb")
    with zipfile.ZipFile(path) as zipped:
        try:
            info = zipped.getinfo(WEIGHTS_MEMBER)
        except KeyError:
            raise CheckpointError(f"{path}: a zip archive without {WEIGHTS_MEMBER}: not a .keras model") from None
    if info.compress_type != zipfile.ZIP_STORED:
        return zipfile.ZipFile(path).open(info)  # seekable, at the cost of decompressing again
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: the zip entry of {WEIGHTS_MEMBER} is damaged")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return _Range(path, info.header_offset + 30 + name_length + extra_length, info.file_size)
