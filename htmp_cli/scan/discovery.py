"""What a scan analyses: paths, globs and list files in, one `ScanUnit` per checkpoint out.

A folder holding a Hugging Face checkpoint (`model.safetensors`, an index, `pytorch_model.bin`) is one
checkpoint; elsewhere every file that looks like a checkpoint is one, except the shards an index in the
same folder joins. Each unit carries the files it is made of, so its content can be fingerprinted
without parsing it: a broken checkpoint still gets an identity and a row in the store.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from htmp_cli.errors import HtmpError
from htmp_cli.loaders import FOLDER_FILES, PYTORCH_SUFFIXES
from htmp_cli.loaders.hub import hub_id, resolve

CHECKPOINT_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".keras", ".h5", *PYTORCH_SUFFIXES)
LIST_SUFFIXES = (".txt", ".lst")
_SPLIT_GGUF = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
_GLOB_CHARS = re.compile(r"[*?\[]")
# Files up to this size are hashed whole; larger ones by a sample (see `fingerprint_files`).
FULL_HASH_LIMIT = 256 * 2**20
_SAMPLES, _CHUNK = 64, 64 * 1024


@dataclass(frozen=True)
class ScanUnit:
    """One checkpoint to analyse: the path handed to `open_checkpoint` and the files it reads."""

    path: Path
    files: tuple[Path, ...]

    @property
    def name(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Discovery:
    units: tuple[ScanUnit, ...]
    ignored: tuple[Path, ...]  # files met in folders that are not checkpoints (configs, tokenizers, ...)


def discover(arguments: list[str]) -> Discovery:
    """Expand scan arguments into checkpoints, in a stable order, each once."""
    units: dict[Path, ScanUnit] = {}
    ignored: list[Path] = []
    for path in _expand(arguments):
        if path.is_dir():
            found, skipped = _walk(path)
            ignored += skipped
        else:
            found = [_file_unit(path)]
        for unit in found:
            units.setdefault(unit.path.resolve(), unit)
    if not units:
        raise HtmpError(f"no checkpoints found in {', '.join(arguments)}")
    return Discovery(units=tuple(units.values()), ignored=tuple(ignored))


def _expand(arguments: list[str]) -> list[Path]:
    paths: list[Path] = []
    for argument in arguments:
        if argument.startswith("@") or (Path(argument).suffix in LIST_SUFFIXES and Path(argument).is_file()):
            paths += _read_list(Path(argument.removeprefix("@")))
        elif not Path(argument).exists() and _GLOB_CHARS.search(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                raise HtmpError(f"{argument}: the pattern matches nothing")
            paths += [Path(m) for m in matches]
        elif Path(argument).exists():
            paths.append(Path(argument))
        elif hub_id(argument) is not None:  # a Hugging Face model id: its files in the cache
            paths.append(resolve(argument)[0])
        else:
            raise HtmpError(f"{argument}: no such file or directory")
    return paths


def _read_list(list_file: Path) -> list[Path]:
    """A list file: one path per line, relative to the list's folder; blank lines and # comments ignored."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise HtmpError(f"list file {list_file}: cannot read: {err}") from None
    paths = []
    for number, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        path = Path(entry) if Path(entry).is_absolute() else list_file.parent / entry
        if not path.exists():
            raise HtmpError(f"list file {list_file}, line {number}: {entry}: no such file or directory")
        paths.append(path)
    return paths


def _walk(root: Path) -> tuple[list[ScanUnit], list[Path]]:
    units: list[ScanUnit] = []
    ignored: list[Path] = []
    for folder, subfolders, names in os.walk(root, followlinks=False):
        subfolders.sort()
        here = Path(folder)
        entries = [here / n for n in names]
        files = sorted(p for p in entries if p.is_file())
        ignored += sorted(p for p in entries if not p.is_file())  # FIFOs, sockets, broken links, link loops
        hf = [here / n for n in FOLDER_FILES if (here / n).is_file()]
        if hf:
            unit = _folder_unit(here, hf[0])
            units.append(unit)
            taken = set(unit.files) | set(hf)
            ignored += [f for f in files if f not in taken and f.suffix in CHECKPOINT_SUFFIXES]
            continue
        joined = {shard for f in files if f.name.endswith(".index.json") for shard in _index_files(f)[1:]}
        splits: dict[str, list[Path]] = {}
        for f in files:
            if f in joined:
                continue
            if f.name.endswith(".index.json"):
                units.append(_file_unit(f))
            elif (m := _SPLIT_GGUF.search(f.name)) is not None:
                splits.setdefault(f.name[: m.start()], []).append(f)
            elif f.suffix in CHECKPOINT_SUFFIXES:
                units.append(_file_unit(f))
            else:
                ignored.append(f)
        for members in splits.values():
            # A split GGUF model is opened through its folder; that works when the folder holds only it.
            ggufs = [f for f in files if f.suffix == ".gguf"]
            if len(ggufs) == len(members):
                units.append(ScanUnit(here, tuple(members)))
            else:
                units += [_file_unit(f) for f in members]
    return units, ignored


def _folder_unit(folder: Path, chosen: Path) -> ScanUnit:
    files = _index_files(chosen) if chosen.name.endswith(".index.json") else [chosen]
    return ScanUnit(folder, tuple(files))


def _file_unit(path: Path) -> ScanUnit:
    return ScanUnit(path, tuple(_index_files(path)) if path.name.endswith(".index.json") else (path,))


def _index_files(index: Path) -> list[Path]:
    """An index and the shards it names (only those inside its folder; the loader rejects the rest)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = sorted({str(v) for v in weight_map.values()})
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return [index]
    inside = [index.parent / s for s in shards if "/" not in s and "\\" not in s and s not in ("", ".", "..")]
    return [index] + [p for p in inside if p.is_file()]


def fingerprint_files(unit: ScanUnit, full: bool = False) -> str:
    """A content hash of a unit's files: whole files up to FULL_HASH_LIMIT (or all with `full`), else a sample.

    The sample is the first and last chunk plus evenly spaced ones, and the size: two training
    snapshots of one architecture differ in every chunk, so they never share a fingerprint.
    """
    digest = hashlib.sha256()
    sampled = False
    for path in unit.files:
        try:
            size = path.stat().st_size
            digest.update(path.name.encode() + b"\0" + size.to_bytes(8, "little"))
            with open(path, "rb") as handle:
                if full or size <= FULL_HASH_LIMIT:
                    while block := handle.read(2**20):
                        digest.update(block)
                else:
                    sampled = True
                    for k in range(_SAMPLES + 1):
                        handle.seek(max(0, min(size - _CHUNK, (size - _CHUNK) * k // _SAMPLES)))
                        digest.update(handle.read(_CHUNK))
        except OSError as err:
            digest.update(f"unreadable: {err.strerror or err}".encode())
    return ("sha256-sampled:" if sampled else "sha256:") + digest.hexdigest()[:40]
