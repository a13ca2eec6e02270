"""PyTorch checkpoints (`.pt`, `.pth`, `.bin`): the zip format and the legacy pre-1.6 format.

Unpickling is the danger of this format: a pickle can name any callable and have it run. htmp
loads these files only with `torch.load(weights_only=True)`, whose unpickler admits tensors and
plain containers and refuses everything else before calling it; a refusal becomes a one-line
error that says why.

Zip checkpoints are opened on torch's meta device: the pickle is read, no tensor data is, and each
storage carries its byte offset in the file (its zip record is stored uncompressed). Tensors are
then read like safetensors ones, by offset into a fresh buffer, so memory stays bounded by one
matrix rather than growing with mapped pages. A tensor that is a strided view, or a file whose
records torch cannot place, is read through a memory-mapped `torch.load` instead. Legacy files
cannot be mapped, so torch reads them whole.

Training scripts wrap their weights: `{"state_dict": ..., "optimizer": ..., "epoch": 3}`, a
DataParallel model's `module.` prefix, torch.compile's `_orig_mod.`. The loader unwraps the common
forms and records what it did, so the names in a report are the model's own.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders.dtypes import F8_E4M3_VALUES, F8_E5M2_VALUES, FLOAT_DTYPES, Decoder, decode_bf16
from htmp_cli.loaders.entry import TensorEntry, read_stored
from htmp_cli.loaders.legacy_pickle import check_declared_sizes

# Keys under which training scripts keep a model's weights, in the order they are tried.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
# Prefixes that wrappers add to every name: DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_UNWRAP = 4
_OFFSET_DTYPES = set(FLOAT_DTYPES)

_TORCH_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "int32": "I32",
    "uint32": "U32", "int64": "I64", "uint64": "U64", "complex64": "C64",
}


@dataclass(frozen=True)
class PyTorchFile:
    path: Path
    format: str  # "pytorch-zip" or "pytorch-legacy"
    tensors: tuple[TensorEntry, ...]
    notes: tuple[str, ...]


def _torch():
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            "reading PyTorch checkpoints needs torch; install it with: pip install 'htmp-cli[torch]'"
        ) from None
    return torch


def _refusal(path: Path, err: Exception) -> CheckpointError:
    text = str(err)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:
        detail = f"it calls {named.group(1)}"
    else:
        operand = re.search(r"Unsupported operand (\d+)", text)
        detail = (f"it uses pickle opcode {operand.group(1)}, which weights_only does not admit" if operand
                  else "it holds objects other than tensors and containers")
    return CheckpointError(
        f"{path}: refused: unpickling it would run code, not just rebuild tensors ({detail}); "
        "htmp loads PyTorch files with weights_only=True and never runs a checkpoint's code. "
        "If you trust the file, re-save its state_dict with torch.save and analyse that"
    )


def load_flat(path: Path, meta: bool = False) -> tuple[str, dict[str, Any], dict[str, str], list[str]]:
    """torch.load the file safely, unwrap and flatten it: (format, {key: tensor}, {key: name}, notes).

    With `meta`, a zip file's tensors come without data, on the meta device, each storage knowing
    its offset in the file; otherwise zip files are memory-mapped and legacy ones read whole.
    """
    torch = _torch()
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        with warnings.catch_warnings():
            # torch's advice on pickle protocols and weights_only defaults is not for htmp's users.
            warnings.simplefilter("ignore")
            if is_zip and meta:
                loaded = torch.load(path, map_location="meta", weights_only=True)
            elif is_zip:
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            else:
                loaded = torch.load(_legacy_bytes(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weightsunpickler" in str(err).lower():
            raise _refusal(path, err) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a PyTorch file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, ValueError, ... for damaged files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None
    fmt = "pytorch-zip" if is_zip else "pytorch-legacy"
    flat, names, notes = unwrap_state_dict(loaded, torch.Tensor)
    if not flat:
        raise CheckpointError(f"{path}: holds no tensors ({type(loaded).__name__} at the top level)")
    return fmt, flat, names, notes


def _legacy_bytes(path: Path) -> io.BytesIO:
    """A legacy file, read whole (torch would), once its storages are known to fit in it.

    From a buffer, a pickle's lying length prefix reads what is there; from a file object,
    Python allocates the claimed length first.
    """
    data = path.read_bytes()
    problem = check_declared_sizes(data)
    if problem is not None:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {problem}")
    return io.BytesIO(data)


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0][:200] if lines else type(err).__name__) or type(err).__name__


def unwrap_state_dict(loaded: Any, tensor_type: type) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The tensors of a loaded checkpoint by dotted key, each key's name without wrapper prefixes,
    and notes on the wrappers taken off."""
    notes: list[str] = []
    if isinstance(loaded, tensor_type):
        return {"tensor": loaded}, {"tensor": "tensor"}, ["the file holds a single tensor; it is named 'tensor'"]
    if not isinstance(loaded, Mapping):
        return {}, {}, notes
    current: Mapping = loaded
    for _ in range(_MAX_UNWRAP):
        if any(isinstance(v, tensor_type) for v in current.values()):
            break
        key = next((k for k in WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None)
        if key is None:
            break
        others = sorted(str(k) for k in current if k != key)
        notes.append(f"weights read from the {key!r} entry" + (f"; ignored: {', '.join(others)}" if others else ""))
        current = current[key]
    flat: dict[str, Any] = {}
    ignored: list[str] = []
    _flatten(current, "", flat, ignored, tensor_type)
    if ignored:
        shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        notes.append(f"{len(ignored)} entries that are not tensors ignored: {shown}")
    stripped, prefix_notes = strip_wrapper_prefixes(list(flat))
    return flat, dict(zip(flat, stripped)), notes + prefix_notes


def strip_wrapper_prefixes(names: list[str]) -> tuple[list[str], list[str]]:
    """The names without the prefix a wrapper gave every one of them, and a note for each prefix removed."""
    notes = []
    for prefix in WRAPPER_PREFIXES:
        if names and all(name.startswith(prefix) for name in names):
            names = [name[len(prefix):] for name in names]
            notes.append(f"removed the {prefix!r} prefix from every name")
    return names, notes


def _flatten(node: Mapping, prefix: str, out: dict[str, Any], ignored: list[str], tensor_type: type) -> None:
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, tensor_type):
            if name in out:  # {"a.b": x, "a": {"b": y}}: one of them would be lost
                raise CheckpointError(f"two tensors are both named {name!r} once nested names are joined with '.'")
            out[name] = value
        elif isinstance(value, Mapping):
            _flatten(value, name + ".", out, ignored, tensor_type)
        else:
            ignored.append(name)


def dtype_name(tensor: Any) -> str:
    torch_name = str(tensor.dtype).removeprefix("torch.")
    return _TORCH_DTYPES.get(torch_name, torch_name)


def read_pytorch(path: Path) -> tuple[PyTorchFile, dict[str, Any] | None]:
    """Open one PyTorch file: its entries, and for a legacy file the tensors torch read.

    Entries of a zip file that can be read by offset carry `offset` and `nbytes`; the others
    (strided views, unplaceable records) carry only their `key`.
    """
    fmt, flat, names, notes = load_flat(path, meta=True)
    placeable = fmt == "pytorch-zip" and _records_stored_little_endian(path)
    file_size = path.stat().st_size
    entries = []
    for key, t in flat.items():
        entry = TensorEntry(name=names[key], dtype=dtype_name(t), shape=tuple(int(d) for d in t.shape), file=path, key=key)
        if placeable:
            entry = _placed(entry, t, file_size) or entry
        entries.append(entry)
    kept = flat if fmt == "pytorch-legacy" else None
    return PyTorchFile(path=path, format=fmt, tensors=tuple(entries), notes=tuple(notes)), kept


def _records_stored_little_endian(path: Path) -> bool:
    """True when every data record is stored uncompressed and the byte order is little-endian,
    so that a storage's offset in the file addresses its bytes as they are."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            order = [i for i in infos if i.filename.endswith("/byteorder")]
            if order and archive.read(order[0]).strip() != b"little":
                return False
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError):  # a name flagged UTF-8 that is not: torch reads it, zipfile does not
        return False
    return all(i.compress_type == zipfile.ZIP_STORED for i in infos if "/data/" in i.filename)


def _placed(entry: TensorEntry, tensor: Any, file_size: int) -> TensorEntry | None:
    """The entry with the tensor's byte range in the file, or None when it cannot be read by offset."""
    storage = tensor.untyped_storage()
    base = getattr(storage, "_checkpoint_offset", None)
    if not isinstance(base, int) or not tensor.is_contiguous() or entry.dtype not in _OFFSET_DTYPES:
        return None
    offset = base + tensor.storage_offset() * tensor.element_size()
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0 or offset < 0 or offset + nbytes > min(file_size, base + storage.nbytes()):
        return None
    return replace(entry, offset=offset, nbytes=nbytes)


def stored_from_tensor(tensor: Any) -> tuple[np.ndarray, Decoder | None]:
    """A numpy view of a CPU tensor in its storage type, with the decoder to floats when numpy has none."""
    torch = _torch()
    tensor = tensor.detach()  # a parameter saved with requires_grad=True
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16), decode_bf16
    if tensor.dtype == torch.float8_e4m3fn:
        return tensor.view(torch.uint8).numpy(), F8_E4M3_VALUES.take
    if tensor.dtype == torch.float8_e5m2:
        return tensor.view(torch.uint8).numpy(), F8_E5M2_VALUES.take
    return tensor.numpy(), None


class PyTorchReader:
    """Reads placed tensors by offset, the others by key from one loaded file at a time (zip files
    memory-mapped, legacy files whole: the last one loaded is kept, for the next tensor of it)."""

    def __init__(self, last_loaded: tuple[Path, dict[str, Any]] | None = None) -> None:
        self._loaded = last_loaded

    def read_stored(self, entry: TensorEntry) -> tuple[np.ndarray, Decoder | None]:
        if entry.nbytes:
            return read_stored(entry)
        if self._loaded is None or self._loaded[0] != entry.file:
            self._loaded = None  # free the previous file before loading the next
            _, flat, _, _ = load_flat(entry.file)
            self._loaded = (entry.file, flat)
        return stored_from_tensor(self._loaded[1][entry.key])
