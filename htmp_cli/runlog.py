"""The training log: a JSON Lines file of one record per analysed layer per step.

The first line says what the file is and how it was analysed:

    {"schema": "htmp.monitor/1", "htmp_version": ..., "options": {...}, "model": ..., "started": ...}

and every other line is one layer at one step, the layer exactly as a saved report holds it:

    {"step": 100, "time": 1764600000.0, "layer": {"name": ..., "power_law": {...}, "phase": {...}, ...}}

`time` is when the weights were taken (seconds since the epoch). A log that is opened again (a
resumed run) is appended to; a step recorded twice keeps its last records when read.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, TextIO

from htmp_cli import __version__
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.results import LayerResult, layer_from_dict, layer_to_dict

LOG_SCHEMA = "htmp.monitor/1"


@dataclass(frozen=True)
class LoggedStep:
    """The layers of one analysed step."""

    step: int
    time: float  # when the weights were taken, seconds since the epoch
    layers: tuple[LayerResult, ...]

    def layer(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name or name in layer.aliases:
                return layer
        raise KeyError(f"no layer named {name!r} at step {self.step}")


@dataclass(frozen=True)
class RunLog:
    """A training log read back: its header and its steps, in the order of their step numbers."""

    path: Path
    htmp_version: str
    options: AnalysisOptions
    model: str
    started: float
    steps: tuple[LoggedStep, ...]


class LogWriter:
    """Appends records to a log, one flushed line per layer (a crash loses no finished step)."""

    def __init__(self, path: str | os.PathLike[str], options: AnalysisOptions, model: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            _check_header(self.path)
        try:
            self._file: TextIO = open(self.path, "a", encoding="utf-8")
        except OSError as err:
            raise HtmpError(f"{self.path}: cannot write the training log: {err.strerror or err}") from None
        if fresh:
            self._write({"schema": LOG_SCHEMA, "htmp_version": __version__, "options": options.to_dict(),
                         "model": model, "started": time.time()})

    def append(self, step: int, taken: float, layers: Iterable[LayerResult]) -> None:
        with self._lock:
            for layer in layers:
                self._write({"step": step, "time": taken, "layer": layer_to_dict(layer)})

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()


def is_log_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts as a training log (only its first line is read)."""
    try:
        with open(path, "rb") as file:
            first = file.readline(1 << 16)
    except OSError:
        return False
    return first.lstrip().startswith(b"{") and LOG_SCHEMA.encode() in first


def read_log(path: str | os.PathLike[str]) -> RunLog:
    """A training log; raises HtmpError naming the file and line of what it cannot read."""
    path = Path(path)
    header = _check_header(path)
    by_step: dict[int, tuple[float, dict[str, LayerResult]]] = {}
    with open(path, encoding="utf-8") as file:
        next(file)
        for number, line in enumerate(file, start=2):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step, taken, layer = int(record["step"]), float(record["time"]), layer_from_dict(record["layer"])
            except (ValueError, KeyError, TypeError, HtmpError) as err:
                if not line.endswith("\n"):
                    break  # a last line cut short (the run was killed while writing): the rest stands
                raise HtmpError(f"{path}:{number}: not a training log record ({type(err).__name__}: {err})") from None
            earlier = by_step.get(step)
            if earlier is None or earlier[0] != taken:  # a step analysed again (a resumed run): the last wins
                by_step[step] = (taken, {})
            by_step[step][1][layer.name] = layer
    steps = tuple(LoggedStep(step, taken, tuple(layers.values())) for step, (taken, layers) in sorted(by_step.items()))
    return RunLog(path=path, htmp_version=header["htmp_version"],
                  options=AnalysisOptions.from_mapping(header.get("options") or {}),
                  model=str(header.get("model", "")), started=float(header.get("started", 0.0)), steps=steps)


def _check_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            first = file.readline()
    except OSError as err:
        raise HtmpError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise HtmpError(f"{path}: not a training log (not UTF-8 text)") from None
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("schema") != LOG_SCHEMA:
        raise HtmpError(f"{path}: not a training log (its first line should be an {LOG_SCHEMA} header)")
    return header
