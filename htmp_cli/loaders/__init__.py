"""Checkpoint discovery: a path in, a validated list of tensors out, and reads of one tensor at a time.

Formats are recognised by their first bytes, not their names: safetensors (single or sharded),
PyTorch zip and legacy pickles (single or sharded), GGUF (single or split). A folder is searched
for what Hugging Face and llama.cpp releases hold, and the choice is recorded in `notes`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders.dtypes import Decoder
from htmp_cli.loaders.entry import TensorEntry, read_stored
from htmp_cli.loaders.index import check_weight_map, read_shard_index
from htmp_cli.loaders.matrices import MatrixRules, MatrixSpec, MatrixView, SkippedTensor, plan_matrices
from htmp_cli.loaders.safetensors import read_header

__all__ = ["Checkpoint", "TensorEntry", "open_checkpoint", "plan_checkpoint"]

Reader = Callable[[TensorEntry], tuple[np.ndarray, Decoder | None]]

# A Hugging Face folder, in the order transformers itself prefers.
FOLDER_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
PYTORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_SPLIT_GGUF = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
# A fingerprint samples this many evenly spaced chunks of the data section, so it is O(1) in file
# size yet tells apart two checkpoints of one architecture with different weights.
_FINGERPRINT_SAMPLES = 16
_FINGERPRINT_CHUNK = 4096
_ZIP_MAGIC = b"PK\x03\x04"
_GGUF_MAGIC = b"GGUF"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose headers have all been validated; tensor data is read on demand."""

    path: Path
    format: str
    files: tuple[Path, ...]
    tensors: tuple[TensorEntry, ...]
    size_bytes: int
    fingerprint: str
    notes: tuple[str, ...] = ()
    reader: Reader = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    skipped: tuple[SkippedTensor, ...] = ()  # left out by the loader itself (a module's buffers), with why
    # A LoRA adapter's updates (htmp_cli.loaders.adapters.LowRankUpdate): then these, not the
    # tensors themselves, are what is analysed.
    updates: tuple[Any, ...] = ()
    architecture: str | None = None  # GGUF's general.architecture (the key to llama.cpp's tensor names)

    @property
    def is_adapter(self) -> bool:
        """A LoRA adapter (htmp_cli.loaders.adapters): its updates are analysed, not its tensors."""
        return self.format.startswith("peft-")

    def read(self, entry: TensorEntry) -> np.ndarray:
        """One tensor as a float array of its shape, converted exactly (GGUF blocks: dequantised)."""
        stored, decode = self.read_stored(entry)
        return stored if decode is None else decode(stored)

    def read_stored(self, entry: TensorEntry) -> tuple[np.ndarray, Decoder | None]:
        """One tensor in its storage type, shaped, with the decoder to floats (None if it is floats)."""
        return self.reader(entry)

    def read_matrix(self, spec: MatrixSpec) -> tuple[np.ndarray, Decoder | None]:
        """The stored values of one planned matrix (3-D for pooled conv slices) and their decoder.

        One expert of a stacked tensor in an offset-addressed file is read on its own: a GGUF
        expert stack can be gigabytes once dequantised, one expert is an ordinary matrix.
        """
        entry, view = spec.entry, spec.view
        if spec.factor is not None:
            from htmp_cli.loaders.adapters import low_rank_factors

            return low_rank_factors(self.read(entry), self.read(spec.factor), view, spec.scale), None
        if view.how == "expert" and entry.nbytes:
            per_expert = entry.nbytes // entry.shape[0]
            entry = replace(entry, shape=entry.shape[1:], offset=entry.offset + view.index * per_expert,
                            nbytes=per_expert)
            view = MatrixView()
        stored, decode = self.read_stored(entry)
        return view.apply(stored), decode


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a checkpoint file, a shard index, or a folder holding one; or a LoRA adapter (a folder
    with `adapter_config.json`, or its weights file); or, where no such path exists, a Hugging Face
    Hub model id (`org/name`, `org/name@revision`, htmp_cli.loaders.hub)."""
    from htmp_cli.loaders import adapters, hub

    text = os.fspath(path)
    path = Path(path)
    if not os.path.lexists(path) and hub.hub_id(text) is not None:  # a path that exists always wins
        resolved, note = hub.resolve(text)
        return _with_notes(open_checkpoint(resolved), [note])
    _require_file_or_folder(path)
    if path.name == adapters.CONFIG_NAME:
        path = path.parent
    if path.is_dir():
        if (path / adapters.CONFIG_NAME).is_file():
            weights = adapters.weights_in(path)
            return _as_adapter(_with_notes(_open_file(weights), [f"folder: PEFT adapter {weights.name}"]), path)
        return _open_folder(path)
    if path.name.endswith(".index.json"):
        return _open_index(path)
    opened = _open_file(path)
    if adapters.holds_lora_factors(opened.tensors):
        return _as_adapter(opened, path)
    return opened


def _as_adapter(opened: Checkpoint, path: Path) -> Checkpoint:
    from htmp_cli.loaders import adapters

    config_path = adapters.find_config(path)
    config = adapters.read_config(config_path) if config_path is not None else None
    return replace(adapters.with_updates(opened, config, config_path), path=path)


def plan_checkpoint(checkpoint: Checkpoint, rules: MatrixRules) -> tuple[list[MatrixSpec], list[SkippedTensor]]:
    """The matrices a checkpoint's tensors give under `rules`, and the tensors skipped, with why
    (those the loader left out included); for an adapter, the matrices of its updates."""
    if checkpoint.is_adapter:
        from htmp_cli.loaders.adapters import plan_updates

        matrices, skipped = plan_updates(checkpoint.updates, rules)
    else:
        matrices, skipped = plan_matrices(checkpoint.tensors, rules)
    return matrices, skipped + list(checkpoint.skipped)


def _require_file_or_folder(path: Path) -> None:
    """Refuse what would hang a read (a FIFO), never end (a device) or loop (links to themselves)."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CheckpointError(f"{path}: symbolic link loop") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise CheckpointError(f"{path}: no such file or directory") from None
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    except ValueError as err:  # an embedded NUL byte
        raise CheckpointError(f"{path!s:.200}: not a usable path ({err})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise CheckpointError(f"{path}: not a regular file or a folder (a FIFO, socket or device)")


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(9)
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None


def _open_file(path: Path) -> Checkpoint:
    magic = _magic(path)
    if magic.startswith(_GGUF_MAGIC) or path.suffix == ".gguf":
        return _open_gguf([path])
    if path.suffix == ".onnx":  # a protobuf has no magic number
        return _open_onnx(path)
    if magic.startswith(_HDF5_MAGIC) or (magic.startswith(_ZIP_MAGIC) and _is_keras_archive(path)):
        return _open_keras(path)
    if magic.startswith(_ZIP_MAGIC) and not _holds_a_pickle(path):
        raise CheckpointError(f"{path}: not a checkpoint htmp reads: it looks like a zip archive with no data.pkl "
                              "(a PyTorch checkpoint has one). htmp reads safetensors, PyTorch .pt/.pth/.bin/.ckpt, "
                              "GGUF, ONNX, Keras .keras and .h5, shard indexes (.index.json) and folders of them")
    if magic.startswith(_ZIP_MAGIC) or (magic[:1] == b"\x80" and path.suffix in PYTORCH_SUFFIXES):
        return _open_pytorch([path], index=None)
    if path.suffix in PYTORCH_SUFFIXES and not (len(magic) == 9 and magic[8:9] == b"{"):
        raise CheckpointError(f"{path}: neither a PyTorch zip file nor a pickle (starts with {magic[:4]!r})")
    if not (len(magic) == 9 and magic[8:9] == b"{") and path.suffix != ".safetensors":
        # Every safetensors file starts with its header's length and then "{": this is something else.
        # (A damaged .safetensors file is left to its parser, which names the fault.)
        raise CheckpointError(f"{path}: not a checkpoint htmp reads: {looks_like(path)}. htmp reads safetensors, "
                              "PyTorch .pt/.pth/.bin/.ckpt, GGUF, ONNX, Keras .keras and .h5, shard indexes (.index.json) and folders of them")
    return _open_safetensors([path], index=None)


_LOOKS = ((b"PK", "a zip archive"),
          (b"\x1f\x8b", "a gzip file"), (b"%PDF", "a PDF document"), (b"\x7fELF", "an executable"),
          (b"\x93NUMPY", "a NumPy .npy array"), (b"SQLite format 3", "an SQLite database (an htmp scan store?)"))


def _holds_a_pickle(path: Path) -> bool:
    """Whether a zip file has the data.pkl of torch.save's format; a damaged one is left to the loader."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, ValueError):
        return True


def starts_an_htmp_report(head: bytes) -> bool:
    """Whether a file's first bytes are those of a report written by `htmp analyze --format json`."""
    return head.lstrip()[:1] == b"{" and b'"schema"' in head and b"htmp.report" in head


def looks_like(path: Path) -> str:
    """What a file that is not a checkpoint appears to be, in words, from its first bytes and name."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    if not head:
        return "it is empty"
    for magic, what in _LOOKS:
        if head.startswith(magic):
            return f"it looks like {what}"
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        if starts_an_htmp_report(head):
            return ("it is an htmp report (JSON): htmp check, diff, plot and report read reports; "
                    "htmp analyze prints one as saved")
        if b'"schema"' in head and b"htmp.monitor/" in head.split(b"\n", 1)[0]:
            return ("it is a training log of htmp_cli.Monitor (JSON Lines): htmp trajectory, check and report "
                    "read it")
        return "it looks like a JSON file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"its first bytes are {head[:8]!r}"
    return "it looks like a text file"


def _open_folder(folder: Path) -> Checkpoint:
    present = [name for name in FOLDER_FILES if (folder / name).is_file()]
    if present:
        chosen = folder / present[0]
        note = f"folder: found {', '.join(present)}" + (f"; analysing {present[0]}" if len(present) > 1 else "")
        return _with_notes(open_checkpoint(chosen), [note])
    candidates = {
        "safetensors indexes": sorted(folder.glob("*.safetensors.index.json")),
        "PyTorch indexes": sorted(folder.glob("*.bin.index.json")),
        "safetensors files": sorted(folder.glob("*.safetensors")),
        "PyTorch files": sorted(p for p in folder.iterdir() if p.suffix in PYTORCH_SUFFIXES and p.is_file()),
    }
    ggufs = sorted(folder.glob("*.gguf"))
    for kind, files in candidates.items():
        if len(files) == 1:
            others = [p.name for group in candidates.values() for p in group if p != files[0]] + [p.name for p in ggufs]
            notes = [f"folder: analysing {files[0].name}" + (f"; also found {', '.join(others[:5])}" if others else "")]
            return _with_notes(open_checkpoint(files[0]), notes)
        if len(files) > 1 and kind.endswith("files") and not ggufs:
            if kind == "safetensors files" and any(_SHARD_NAME.search(p.name) for p in files):
                raise CheckpointError(f"{folder}: holds {len(files)} safetensors shards but no index.json to join them")
            raise CheckpointError(f"{folder}: holds {len(files)} {kind} ({_names(files)}); pass the one to analyse")
    if ggufs:
        return _open_gguf_folder(folder, ggufs)
    found = _names(sorted(p for p in folder.iterdir()))
    raise CheckpointError(f"{folder}: no checkpoint found (looked for safetensors, PyTorch and GGUF files; "
                          f"the folder holds {found or 'nothing'})")


_SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}\.")


def _names(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _with_notes(checkpoint: Checkpoint, notes: list[str]) -> Checkpoint:
    if not notes:
        return checkpoint
    return replace(checkpoint, notes=tuple(notes) + checkpoint.notes)


def _open_index(index_path: Path) -> Checkpoint:
    weight_map, shards = read_shard_index(index_path)
    if all(s.suffix == ".safetensors" for s in shards):
        return _open_safetensors(shards, index=(index_path, weight_map))
    if all(s.suffix in PYTORCH_SUFFIXES for s in shards):
        return _open_pytorch(shards, index=(index_path, weight_map))
    raise CheckpointError(f"{index_path}: shards must all be .safetensors or all PyTorch files ({_names(shards)})")


def _open_safetensors(files: list[Path], index: tuple[Path, dict[str, str]] | None) -> Checkpoint:
    headers = [read_header(f) for f in files]
    if index is not None:
        check_weight_map(index[0], index[1], [(e.name, h.path) for h in headers for e in h.tensors])
    return Checkpoint(
        path=index[0] if index else files[0],
        format="safetensors-sharded" if index else "safetensors",
        files=tuple(h.path for h in headers),
        tensors=tuple(e for h in headers for e in h.tensors),
        size_bytes=sum(h.file_size for h in headers),
        fingerprint=_fingerprint([(h.header_bytes, h.path, h.data_start, h.file_size) for h in headers]),
        reader=read_stored,
    )


def _open_pytorch(files: list[Path], index: tuple[Path, dict[str, str]] | None) -> Checkpoint:
    from htmp_cli.loaders.pytorch import PyTorchReader, read_pytorch

    opened = [read_pytorch(f) for f in files]
    if index is not None:
        check_weight_map(index[0], index[1], [(e.key, pt.path) for pt, _ in opened for e in pt.tensors])
    kinds = sorted({pt.format for pt, _ in opened})
    fmt = kinds[0] if len(kinds) == 1 else "pytorch-mixed"
    notes = [note for pt, _ in opened for note in pt.notes]
    if "pytorch-legacy" in kinds:
        notes.append("legacy (pre-1.6) PyTorch format: it cannot be memory-mapped, so torch reads each file whole")
    header = "\n".join(f"{e.key}:{e.dtype}:{e.shape}" for pt, _ in opened for e in pt.tensors).encode()
    sizes = [f.stat().st_size for f in files]
    return Checkpoint(
        path=index[0] if index else files[0],
        format=fmt + ("-sharded" if index else ""),
        files=tuple(files),
        tensors=tuple(e for pt, _ in opened for e in pt.tensors),
        size_bytes=sum(sizes),
        fingerprint=_fingerprint([(header if k == 0 else b"", f, 0, s) for k, (f, s) in enumerate(zip(files, sizes))]),
        notes=tuple(notes),
        reader=PyTorchReader(next(((pt.path, flat) for pt, flat in reversed(opened) if flat is not None), None)).read_stored,
    )


def _open_onnx(path: Path) -> Checkpoint:
    from htmp_cli.loaders.onnx_file import read_onnx

    model = read_onnx(path)
    return Checkpoint(path=path, format="onnx" if len(model.files) == 1 else "onnx-external", files=model.files,
                      tensors=model.tensors, size_bytes=sum(f.stat().st_size for f in model.files),
                      fingerprint=_fingerprint([(b"", f, 0, f.stat().st_size) for f in model.files]),
                      notes=model.notes, reader=model.reader, skipped=model.skipped)


def _open_keras(path: Path) -> Checkpoint:
    from htmp_cli.loaders.keras_file import read_keras

    model = read_keras(path)
    size = path.stat().st_size
    return Checkpoint(path=path, format=model.format, files=(path,), tensors=model.tensors, size_bytes=size,
                      fingerprint=_fingerprint([(b"", path, 0, size)]), notes=model.notes, reader=model.reader,
                      skipped=model.skipped)


def _is_keras_archive(path: Path) -> bool:
    """Whether a zip file is a Keras 3 `.keras` archive (config.json and model.weights.h5)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, ValueError):
        return False
    return "model.weights.h5" in names and "config.json" in names


def _open_gguf(files: list[Path]) -> Checkpoint:
    from htmp_cli.loaders.gguf_file import read_gguf_header, read_stored_gguf

    headers = [read_gguf_header(f) for f in files]
    names = [e.name for h in headers for e in h.tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(f"{files[0].parent}: tensor {dup!r} appears in two GGUF splits")
    notes = []
    if len(headers) == 1 and headers[0].split_count > 1:
        notes.append(f"this is one of {headers[0].split_count} splits; pass the folder to analyse them all")
    arch = headers[0].metadata.get("general.architecture")
    if isinstance(arch, str):
        notes.append(f"GGUF v{headers[0].version}, architecture {arch}")
    return Checkpoint(
        path=files[0] if len(files) == 1 else files[0].parent,
        format="gguf" if len(files) == 1 else "gguf-split",
        files=tuple(files),
        tensors=tuple(e for h in headers for e in h.tensors),
        size_bytes=sum(h.file_size for h in headers),
        fingerprint=_fingerprint([(h.header_sample, h.path, h.data_start, h.file_size) for h in headers]),
        notes=tuple(notes),
        reader=read_stored_gguf,
        architecture=arch if isinstance(arch, str) else None,
    )


def _open_gguf_folder(folder: Path, ggufs: list[Path]) -> Checkpoint:
    if len(ggufs) == 1:
        return _with_notes(_open_gguf(ggufs), [f"folder: analysing {ggufs[0].name}"])
    from htmp_cli.loaders.gguf_file import read_gguf_header

    headers = [read_gguf_header(p) for p in ggufs]
    counts = {h.split_count for h in headers}
    numbers = sorted(h.metadata.get("split.no", -1) for h in headers)
    if counts == {len(ggufs)} and numbers == list(range(len(ggufs))):
        ordered = [h.path for h in sorted(headers, key=lambda h: h.metadata.get("split.no", 0))]
        return _with_notes(_open_gguf(ordered), [f"folder: {len(ggufs)} GGUF splits of one model"])
    raise CheckpointError(f"{folder}: holds {len(ggufs)} GGUF files that are not splits of one model "
                          f"({_names(ggufs)}); pass the one to analyse")


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
