"""Checkpoint discovery: a path in, a validated list of tensors out, and reads of one tensor at a time."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders.dtypes import stored_array, to_float_array
from htmp_cli.loaders.safetensors import TensorEntry, read_header, read_raw

__all__ = ["Checkpoint", "TensorEntry", "open_checkpoint"]

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
# A fingerprint samples this many evenly spaced chunks of the data section, so it is O(1) in file
# size yet tells apart two checkpoints of one architecture with different weights.
_FINGERPRINT_SAMPLES = 16
_FINGERPRINT_CHUNK = 4096


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose headers have all been validated; tensor data is read on demand."""

    path: Path
    format: str
    files: tuple[Path, ...]
    tensors: tuple[TensorEntry, ...]
    size_bytes: int
    fingerprint: str

    def read(self, entry: TensorEntry) -> np.ndarray:
        """One tensor as a float array of its shape (float dtypes only), converted exactly."""
        raw = read_raw(entry)
        return to_float_array(raw, entry.dtype).reshape(entry.shape)

    def read_stored(self, entry: TensorEntry) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray] | None]:
        """One tensor in its storage type, shaped, with the decoder to floats (None if it is floats)."""
        stored, decode = stored_array(read_raw(entry), entry.dtype)
        return stored.reshape(entry.shape), decode


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a `.safetensors` file, a shard index, or a folder holding either."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / SHARD_INDEX).is_file():
            return _open_sharded(path / SHARD_INDEX)
        if (path / SINGLE_FILE).is_file():
            return _open_single(path / SINGLE_FILE)
        singles = sorted(path.glob("*.safetensors"))
        if len(singles) == 1:
            return _open_single(singles[0])
        found = ", ".join(p.name for p in singles[:5]) or "no .safetensors files"
        raise CheckpointError(
            f"{path}: folder holds neither {SINGLE_FILE} nor {SHARD_INDEX} ({found}); "
            "pass the file to analyse"
        )
    if path.name.endswith(".index.json"):
        return _open_sharded(path)
    return _open_single(path)


def _open_single(path: Path) -> Checkpoint:
    header = read_header(path)
    return Checkpoint(
        path=path,
        format="safetensors",
        files=(path,),
        tensors=header.tensors,
        size_bytes=header.file_size,
        fingerprint=_fingerprint([(header.header_bytes, path, header.data_start, header.file_size)]),
    )


def _open_sharded(index_path: Path) -> Checkpoint:
    folder = index_path.parent.resolve()
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except OSError as err:
        raise CheckpointError(f"{index_path}: cannot read: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{index_path}: not valid JSON ({err})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index_path}: 'weight_map' must map tensor names to shard file names")

    shard_names = sorted(set(weight_map.values()))
    headers = []
    for shard_name in shard_names:
        shard = (folder / shard_name).resolve()
        if folder not in shard.parents:
            raise CheckpointError(f"{index_path}: shard {shard_name!r} resolves outside the checkpoint folder")
        if not shard.is_file():
            raise CheckpointError(f"{index_path}: shard {shard_name!r} is missing")
        headers.append(read_header(shard))

    by_name: dict[str, TensorEntry] = {}
    for header in headers:
        for entry in header.tensors:
            if entry.name in by_name:
                raise CheckpointError(f"{index_path}: tensor {entry.name!r} appears in two shards")
            by_name[entry.name] = entry
    for name, shard_name in weight_map.items():
        entry = by_name.get(name)
        if entry is None or entry.file.name != Path(shard_name).name:
            raise CheckpointError(f"{index_path}: tensor {name!r} is not in shard {shard_name!r}")
    unlisted = sorted(set(by_name) - set(weight_map))
    if unlisted:
        raise CheckpointError(f"{index_path}: tensor {unlisted[0]!r} is in a shard but not in weight_map")

    return Checkpoint(
        path=index_path,
        format="safetensors-sharded",
        files=tuple(h.path for h in headers),
        tensors=tuple(e for h in headers for e in h.tensors),
        size_bytes=sum(h.file_size for h in headers),
        fingerprint=_fingerprint([(h.header_bytes, h.path, h.data_start, h.file_size) for h in headers]),
    )


def _fingerprint(parts: list[tuple[bytes, Path, int, int]]) -> str:
    digest = hashlib.sha256()
    for header_bytes, path, data_start, file_size in parts:
        digest.update(file_size.to_bytes(8, "little"))
        digest.update(header_bytes)
        data_size = file_size - data_start
        with open(path, "rb") as handle:
            for k in range(_FINGERPRINT_SAMPLES):
                handle.seek(data_start + data_size * k // _FINGERPRINT_SAMPLES)
                digest.update(handle.read(_FINGERPRINT_CHUNK))
    return "sha256-sampled:" + digest.hexdigest()[:32]
