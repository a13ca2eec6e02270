"""Progress over layers on a terminal (layers done, current layer, ETA); silent anywhere else."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from htmp_cli.loaders.matrices import MatrixSpec
from htmp_cli.pipeline import LayerResult


class LayerProgress:
    """A ProgressListener drawing a rich progress bar on stderr."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]analysing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.description}", style="dim"),
            console=console,
            transient=True,
        )
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
