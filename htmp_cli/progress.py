"""Progress over layers on a terminal (layers done, current layer, ETA); silent anywhere else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from htmp_cli.loaders.matrices import MatrixSpec
from htmp_cli.results import LayerResult

if TYPE_CHECKING:
    from htmp_cli.scan.worker import Outcome


def _bars(console: Console, label: TextColumn) -> Progress:
    """Label, bar, done/total, elapsed, ETA, then the task's description; cleared when done."""
    return Progress(label, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), TextColumn("{task.description}", style="dim"), console=console,
                    transient=True)


class LayerProgress:
    """A ProgressListener drawing a rich progress bar on stderr."""

    def __init__(self, console: Console) -> None:
        self._progress = _bars(console, TextColumn("[bold]analysing"))
        self._task = None

    def __enter__(self) -> "LayerProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, total: int) -> None:
        self._task = self._progress.add_task("", total=total)

    def layer_started(self, spec: MatrixSpec) -> None:
        self._progress.update(self._task, description=f"{spec.name} {spec.shape[0]}x{spec.shape[1]}")

    def layer_done(self, result: LayerResult) -> None:
        self._progress.advance(self._task)


class ScanProgress:
    """A ScanListener: one bar over checkpoints and one per checkpoint in flight (its layers)."""

    def __init__(self, console: Console) -> None:
        self._progress = _bars(console, TextColumn("{task.fields[label]}", style="bold"))
        self._overall = None
        self._names: dict[int, str] = {}
        self._tasks: dict[int, object] = {}

    def __enter__(self) -> "ScanProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def fingerprinting(self, total: int) -> None:
        self._overall = self._progress.add_task("fingerprinting", total=None, label="scanning")

    def start(self, names: dict[int, str], reused: int) -> None:
        self._names = names
        self._progress.update(self._overall, total=len(names), completed=0,
                              description=f"{reused} already in the store" if reused else "")

    def event(self, index: int, kind: str, value: int) -> None:
        if kind == "start":
            name = self._names.get(index, "")
            self._tasks[index] = self._progress.add_task(name[-60:], total=value, label="  layers")
        elif kind == "layer" and index in self._tasks:
            self._progress.advance(self._tasks[index], value)

    def checkpoint_done(self, index: int, outcome: Outcome | None) -> None:
        task = self._tasks.pop(index, None)
        if task is not None:
            self._progress.remove_task(task)
        self._progress.advance(self._overall)
