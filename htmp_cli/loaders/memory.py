"""Weights already in memory: a torch module, a state dict of torch tensors or numpy arrays, one array.

Nothing is written to disk: the checkpoint's reader hands out the tensors themselves (a CPU torch
tensor as a numpy view of its storage, bf16 and float8 with their exact decoders, as the file
loaders do; a tensor on a GPU as it is, to be solved there). Names lose the wrappers' prefixes as in files (DataParallel's and DDP's `module.`,
torch.compile's `_orig_mod.`). One tensor under several names (tied weights) is analysed once,
under its first name, with the others as its aliases. A module's buffers are not weights: they are
listed as skipped.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders import Checkpoint
from htmp_cli.loaders.dtypes import NUMPY_DTYPE_NAMES, Decoder
from htmp_cli.loaders.entry import TensorEntry
from htmp_cli.loaders.matrices import SkippedTensor
from htmp_cli.loaders.pytorch import dtype_name, stored_from_tensor, strip_wrapper_prefixes, unwrap_state_dict

_SAMPLE_BYTES = 4096  # of each CPU tensor, for the fingerprint


def is_in_memory_source(source: object) -> bool:
    """Whether `source` is weights in memory (a module, a mapping, an array) rather than a path."""
    if isinstance(source, (np.ndarray, Mapping)):
        return True
    module = type(source).__module__
    return module.startswith("torch") or _is_module(source)


def open_in_memory(source: Any) -> Checkpoint:
    """A Checkpoint over in-memory weights; raises CheckpointError naming what it cannot read."""
    skipped: list[SkippedTensor] = []
    if _is_module(source):
        fmt, what = "torch-module", f"<torch module {type(source).__name__}>"
        named = list(source.named_parameters(remove_duplicate=False))
        buffers = list(source.named_buffers(remove_duplicate=False))
        stripped, notes = strip_wrapper_prefixes([name for name, _ in named + buffers])
        named = list(zip(stripped[:len(named)], (t for _, t in named)))
        buffers = list(zip(stripped[len(named):], (t for _, t in buffers)))
    elif isinstance(source, Mapping):
        # As for a file: wrappers ({"state_dict": ...}) unwrapped, what is not a tensor ignored, with notes.
        flat, unwrapped_names, notes = unwrap_state_dict(source, _tensor_types())
        named, buffers = [(unwrapped_names[key], tensor) for key, tensor in flat.items()], []
        fmt, what = "state-dict", f"<state dict of {len(named)} tensors>"
    elif _is_array(source):
        if len(source.shape) != 2:
            raise CheckpointError(f"an array of shape {tuple(source.shape)}: one matrix must be 2-D "
                                  "(pass a mapping of names to tensors for more)")
        fmt, what = "array", f"<{type(source).__module__.split('.')[0]} array {'x'.join(map(str, source.shape))}>"
        named, buffers, notes = [("matrix", source)], [], []
    else:
        raise CheckpointError(f"cannot analyse a {type(source).__name__}: expected a path, a torch module, "
                              "a mapping of names to tensors or arrays, or one 2-D array")
    tensors: dict[str, Any] = {}
    entries: list[TensorEntry] = []
    first_name_of: dict[tuple, int] = {}
    for name, tensor in named:
        _check_readable(name, tensor)
        identity = _identity(tensor)
        if identity in first_name_of:
            index = first_name_of[identity]
            entries[index] = replace(entries[index], aliases=entries[index].aliases + (name,))
            continue
        first_name_of[identity] = len(entries)
        tensors[name] = tensor
        entries.append(TensorEntry(name=name, dtype=_dtype(tensor), shape=tuple(int(d) for d in tensor.shape),
                                   file=Path(what), key=name))
    for name, tensor in buffers:
        skipped.append(SkippedTensor(name=name, shape=tuple(int(d) for d in tensor.shape), dtype=_dtype(tensor),
                                     reason="a buffer of the module (running statistics, masks), not a weight"))
    aliased = sum(len(e.aliases) for e in entries)
    if aliased:
        notes.append(f"{aliased} tied name(s) analysed once, under the first name (see each layer's aliases)")

    def read(entry: TensorEntry) -> tuple[np.ndarray, Decoder | None]:
        return _stored(tensors[entry.key])

    return Checkpoint(path=Path(what), format=fmt, files=(), tensors=tuple(entries),
                      size_bytes=sum(_nbytes(t) for t in tensors.values()), fingerprint=_fingerprint(entries, tensors),
                      notes=tuple(notes), reader=read, skipped=tuple(skipped))


def _is_module(source: object) -> bool:
    return callable(getattr(source, "named_parameters", None)) and callable(getattr(source, "named_buffers", None))


def _is_array(value: object) -> bool:
    return isinstance(value, np.ndarray) or (type(value).__module__.startswith("torch") and hasattr(value, "dtype")
                                             and hasattr(value, "shape") and hasattr(value, "detach"))


def _tensor_types() -> tuple[type, ...]:
    torch = sys.modules.get("torch")  # a state dict of torch tensors means torch is imported already
    return (np.ndarray, torch.Tensor) if torch is not None else (np.ndarray,)


def _check_readable(name: str, tensor: Any) -> None:
    if getattr(tensor, "is_meta", False):
        raise CheckpointError(f"{name}: the tensor is on the meta device and holds no values "
                              "(load the weights into the model first)")
    layout = str(getattr(tensor, "layout", "torch.strided"))
    if layout != "torch.strided":
        raise CheckpointError(f"{name}: a {layout.removeprefix('torch.')} tensor; htmp reads dense tensors "
                              "(pass tensor.to_dense())")
    if getattr(tensor, "is_quantized", False):
        raise CheckpointError(f"{name}: a quantized torch tensor; pass tensor.dequantize()")


def _identity(tensor: Any) -> tuple:
    """Equal for two names of one tensor (the same memory, shape, strides and dtype); an empty
    tensor has no memory of its own and is nobody's twin."""
    if (tensor.size if isinstance(tensor, np.ndarray) else tensor.numel()) == 0:
        return ("empty", id(tensor))
    if isinstance(tensor, np.ndarray):
        return ("numpy", tensor.__array_interface__["data"][0], tensor.shape, tensor.strides, str(tensor.dtype))
    return ("torch", str(tensor.device), tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()),
            str(tensor.dtype))


def _dtype(tensor: Any) -> str:
    if isinstance(tensor, np.ndarray):
        return NUMPY_DTYPE_NAMES.get(str(tensor.dtype), str(tensor.dtype))
    return dtype_name(tensor)


def _stored(tensor: Any) -> tuple[Any, Decoder | None]:
    """A CPU tensor as a numpy view of its storage; a tensor on an accelerator as it is, for the
    solve to compute where it lives (htmp_cli.layers)."""
    if isinstance(tensor, np.ndarray):
        return tensor, None
    if tensor.device.type != "cpu":
        return tensor.detach(), None
    if tensor.is_conj() or tensor.is_neg():
        tensor = tensor.resolve_conj().resolve_neg()
    return stored_from_tensor(tensor)


def _nbytes(tensor: Any) -> int:
    if isinstance(tensor, np.ndarray):
        return int(tensor.nbytes)
    return int(tensor.numel() * tensor.element_size())


def _fingerprint(entries: list[TensorEntry], tensors: dict[str, Any]) -> str:
    """Names, shapes, dtypes and the first bytes of each tensor: tells two models of one architecture apart."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.name}|{entry.dtype}|{entry.shape}".encode())
        tensor = tensors[entry.key]
        if isinstance(tensor, np.ndarray) or tensor.device.type == "cpu":
            stored, _ = _stored(tensor)
            digest.update(np.ascontiguousarray(stored.reshape(-1)[: _SAMPLE_BYTES // max(stored.itemsize, 1)]).tobytes())
    return "sha256:" + digest.hexdigest()[:32]
