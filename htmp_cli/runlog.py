"""The training log: a JSON Lines file of one record per analysed layer per step.

Each time a monitor opens the log it first writes a header saying what the file is and how the
layers are analysed (a session):

    {"schema": "htmp.monitor/1", "htmp_version": ..., "options": {...}, "model": ..., "started": ...}

and every other line is one layer at one step, the layer exactly as a saved report holds it:

    {"step": 100, "time": 1764600000.0, "layer": {"name": ..., "power_law": {...}, "phase": {...}, ...}}

`time` is when the weights were taken (seconds since the epoch). A log opened again is appended to:
a session that starts at a later step than the one before resumes that run (a step analysed again
keeps its last records), one that starts at the same step or an earlier one is a new run, and
reading takes the last run (`RunLog.earlier_runs` counts the others). A session with other analysis
options than the log's is refused. A last line cut short by a crash is ignored when read, and cut
off before the log is appended to.
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
from htmp_cli.errors import HtmpError, OptionError
from htmp_cli.options import AnalysisOptions
from htmp_cli.results import LayerResult, layer_from_dict, layer_to_dict

LOG_SCHEMA = "htmp.monitor/1"
_SCHEMA_PREFIX = "htmp.monitor/"


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
    """A training log read back: its header, the steps of its last run in step order, and what
    reading it noticed (`notes`: a cut-short last line, a step with fewer layers than the others)."""

    path: Path
    htmp_version: str
    options: AnalysisOptions
    model: str
    started: float
    steps: tuple[LoggedStep, ...]
    earlier_runs: int = 0
    notes: tuple[str, ...] = ()


class LogWriter:
    """Appends records to a log, one flushed line per layer (a crash loses no finished step)."""

    def __init__(self, path: str | os.PathLike[str], options: AnalysisOptions, model: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if self.path.exists() and self.path.stat().st_size > 0:
            header = _check_header(self.path)
            recorded = AnalysisOptions.from_mapping(header.get("options") or {})
            if recorded != options:
                changed = next((k for k, v in options.to_dict().items() if recorded.to_dict().get(k) != v), "options")
                raise OptionError(f"{self.path} holds layers analysed with {changed} = "
                                  f"{recorded.to_dict().get(changed)!r}, not {options.to_dict()[changed]!r}: "
                                  "give this run a log of its own")
            _cut_a_partial_last_line(self.path)
        try:
            self._file: TextIO = open(self.path, "a", encoding="utf-8")
        except OSError as err:
            raise HtmpError(f"{self.path}: cannot write the training log: {err.strerror or err}") from None
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
    """Whether the file starts as a training log, of this version's schema or another (only its
    first line is read)."""
    try:
        with open(path, "rb") as file:
            first = file.readline(1 << 16)
    except OSError:
        return False
    return first.lstrip().startswith(b"{") and _SCHEMA_PREFIX.encode() in first


def read_log(path: str | os.PathLike[str]) -> RunLog:
    """A training log's last run; raises HtmpError naming the file and line of what it cannot read."""
    path = Path(path)
    header = _check_header(path)
    sessions: list[list[tuple[int, float, dict[str, Any]]]] = []
    notes: list[str] = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if isinstance(record, dict) and "schema" in record:
                    sessions.append([])
                    continue
                sessions[-1].append((int(record["step"]), float(record["time"]), record["layer"]))
            except (ValueError, KeyError, TypeError, IndexError) as err:
                if not line.endswith("\n"):  # cut short by a crash while writing: the rest stands
                    notes.append(f"its last line was cut short (a run stopped while writing); step "
                                 f"{sessions[-1][-1][0] if sessions and sessions[-1] else '?'} may lack a layer")
                    break
                raise HtmpError(f"{path}:{number}: not a training log record ({type(err).__name__}: {err})") from None
    runs = _runs([s for s in sessions if s])
    decoded = []
    for step, taken, data in runs[-1] if runs else []:
        try:
            decoded.append((step, taken, layer_from_dict(data)))
        except HtmpError as err:
            raise HtmpError(f"{path}: a layer of step {step}: {err}") from None
    steps = latest_analyses(decoded)
    most = max((len(s.layers) for s in steps), default=0)
    notes += [f"step {s.step} has {len(s.layers)} of {most} layers" for s in steps if len(s.layers) < most]
    return RunLog(path=path, htmp_version=str(header.get("htmp_version", "")),
                  options=AnalysisOptions.from_mapping(header.get("options") or {}),
                  model=str(header.get("model", "")), started=float(header.get("started", 0.0)), steps=steps,
                  earlier_runs=max(0, len(runs) - 1), notes=tuple(notes))


def latest_analyses(records: Iterable[tuple[int, float, LayerResult]]) -> tuple[LoggedStep, ...]:
    """(step, time, layer) records as steps in step order; a step analysed again (another time:
    a resumed run) keeps its last analysis."""
    by_step: dict[int, tuple[float, dict[str, LayerResult]]] = {}
    for step, taken, layer in records:
        if step not in by_step or by_step[step][0] != taken:
            by_step[step] = (taken, {})
        by_step[step][1][layer.name] = layer
    return tuple(LoggedStep(step, taken, tuple(layers.values())) for step, (taken, layers) in sorted(by_step.items()))


def _runs(sessions: list[list[tuple[int, float, dict[str, Any]]]]) -> list[list[tuple[int, float, dict[str, Any]]]]:
    """Sessions joined into runs: one that starts after the previous one's first step resumes it."""
    runs: list[list[tuple[int, float, dict[str, Any]]]] = []
    first_step: int | None = None
    for session in sessions:
        start = session[0][0]
        if runs and first_step is not None and start > first_step:
            runs[-1] = runs[-1] + session
        else:
            runs.append(list(session))
            first_step = start
    return runs


def _cut_a_partial_last_line(path: Path) -> None:
    """Drop what a crash left after the last newline, so that the next record starts a line."""
    with open(path, "rb+") as file:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        if size == 0:
            return
        file.seek(max(0, size - 1))
        if file.read(1) == b"\n":
            return
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            file.seek(start)
            chunk = file.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                file.truncate(start + cut + 1)
                return
            end = start
        file.truncate(0)


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
    schema = header.get("schema") if isinstance(header, dict) else None
    if isinstance(schema, str) and schema.startswith(_SCHEMA_PREFIX) and schema != LOG_SCHEMA:
        raise HtmpError(f"{path}: a training log of schema {schema}, written by another htmp version "
                        f"(this one reads {LOG_SCHEMA})")
    if schema != LOG_SCHEMA:
        raise HtmpError(f"{path}: not a training log (its first line should be an {LOG_SCHEMA} header)")
    return header
