"""PyTorch checkpoints (`.pt`, `.pth`, `.bin`): the zip format and the legacy pre-1.6 format.

Unpickling is the danger of this format: a pickle can name any callable and have it run. htmp
loads these files only with `torch.load(weights_only=True)`, whose unpickler admits tensors and
plain containers and refuses everything else before calling it; a refusal becomes a one-line
error that says why. Zip checkpoints are memory-mapped (a tensor's pages are read when its matrix
is analysed); legacy ones cannot be, so torch reads them whole.

Training scripts wrap their weights: `{"state_dict": ..., "optimizer": ..., "epoch": 3}`, a
DataParallel model's `module.` prefix, torch.compile's `_orig_mod.`. The loader unwraps the common
forms and records what it did, so the names in a report are the model's own.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders.dtypes import F8_E4M3_VALUES, F8_E5M2_VALUES, decode_bf16
from htmp_cli.loaders.entry import TensorEntry

# Keys under which training scripts keep a model's weights, in the order they are tried.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
# Prefixes that wrappers add to every name: DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_UNWRAP = 4

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
    found = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+|[^\n.]*not an allowed global[^\n.]*)",
                      text)
    detail = found.group(1) if found else text.strip().splitlines()[0][:200]
    return CheckpointError(
        f"{path}: refused: unpickling it would run code, not just rebuild tensors ({detail}); "
        "htmp loads PyTorch files with weights_only=True and never runs a checkpoint's code. "
        "If you trust the file, re-save its state_dict with torch.save and analyse that"
    )


def load_flat(path: Path) -> tuple[str, dict[str, Any], dict[str, str], list[str]]:
    """torch.load the file safely, unwrap and flatten it: (format, {key: tensor}, {key: name}, notes)."""
    torch = _torch()
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
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
    names = {key: key for key in flat}
    for prefix in WRAPPER_PREFIXES:
        if names and all(name.startswith(prefix) for name in names.values()):
            names = {key: name[len(prefix):] for key, name in names.items()}
            notes.append(f"removed the {prefix!r} prefix from every name")
    return flat, names, notes


def _flatten(node: Mapping, prefix: str, out: dict[str, Any], ignored: list[str], tensor_type: type) -> None:
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, tensor_type):
            out[name] = value
        elif isinstance(value, Mapping):
            _flatten(value, name + ".", out, ignored, tensor_type)
        else:
            ignored.append(name)


def dtype_name(tensor: Any) -> str:
    torch_name = str(tensor.dtype).removeprefix("torch.")
    return _TORCH_DTYPES.get(torch_name, torch_name)


def read_pytorch(path: Path) -> tuple[PyTorchFile, dict[str, Any]]:
    """Open one PyTorch file: its entries, and the loaded tensors (memory-mapped for the zip format)."""
    fmt, flat, names, notes = load_flat(path)
    entries = tuple(
        TensorEntry(name=names[key], dtype=dtype_name(t), shape=tuple(int(d) for d in t.shape), file=path, key=key)
        for key, t in flat.items()
    )
    return PyTorchFile(path=path, format=fmt, tensors=entries, notes=tuple(notes)), flat


def stored_from_tensor(tensor: Any) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray] | None]:
    """A numpy view of a CPU tensor in its storage type, with the decoder to floats when numpy has none."""
    torch = _torch()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16), decode_bf16
    if tensor.dtype == torch.float8_e4m3fn:
        return tensor.view(torch.uint8).numpy(), F8_E4M3_VALUES.take
    if tensor.dtype == torch.float8_e5m2:
        return tensor.view(torch.uint8).numpy(), F8_E5M2_VALUES.take
    return tensor.numpy(), None


class PyTorchReader:
    """Reads tensors by key. Zip files stay mapped (cheap); of legacy files only the last one is kept."""

    def __init__(self, loaded: dict[Path, dict[str, Any]], formats: dict[Path, str]) -> None:
        self._loaded = {p: flat for p, flat in loaded.items() if formats[p] == "pytorch-zip"}
        legacy = [(p, flat) for p, flat in loaded.items() if formats[p] != "pytorch-zip"]
        self._legacy: tuple[Path, dict[str, Any]] | None = legacy[-1] if legacy else None

    def read_stored(self, entry: TensorEntry) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray] | None]:
        flat = self._loaded.get(entry.file)
        if flat is None:
            if self._legacy is None or self._legacy[0] != entry.file:
                self._legacy = None  # free the previous file before loading the next
                _, flat, _, _ = load_flat(entry.file)
                self._legacy = (entry.file, flat)
            flat = self._legacy[1]
        return stored_from_tensor(flat[entry.key])
