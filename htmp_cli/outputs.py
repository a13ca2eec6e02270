"""Output paths checked before any work: an analysis of hours must not end in "cannot write"."""

from __future__ import annotations

import os
from pathlib import Path

from htmp_cli.errors import HtmpError


def check_writable(path: Path, flag: str, folder: bool = False) -> None:
    """Raise HtmpError naming `flag` unless `path` can be written (its folder exists and is writable).

    folder: the path is a folder the command creates (with its parents) or fills, rather than a file."""
    if folder:
        if path.exists() and not path.is_dir():
            raise HtmpError(f"{flag} {path}: exists and is not a folder")
        target = path
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise HtmpError(f"{flag} {path}: {target} is not a folder")
    else:
        if path.is_dir():
            raise HtmpError(f"{flag} {path}: is a folder, expected a file name")
        if path.exists() and os.access(path, os.W_OK):
            return  # an existing writable file (or /dev/null, /dev/stdout) in a folder that may be read-only
        target = path.parent
    target = target if str(target) else Path(".")
    if not target.exists():
        raise HtmpError(f"{flag} {path}: the folder {target} does not exist")
    if not target.is_dir():
        raise HtmpError(f"{flag} {path}: {target} is not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise HtmpError(f"{flag} {path}: the folder {target} is not writable")
    if not folder and path.exists() and not os.access(path, os.W_OK):
        raise HtmpError(f"{flag} {path}: the file is not writable")
