"""`htmp trajectory`: a training run (a monitor's log, or a folder of step checkpoints) as one trajectory."""

from __future__ import annotations

import io
import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from htmp_cli.cli.common import EXIT_OK, EXIT_SCAN_FAILURES, app, run_guarded, stdout_console, write_text
from htmp_cli.cli.flags import DEBUG, PROGRESS, with_analysis_flags
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions


class TrajectoryFormat(str, Enum):
    text = "text"
    json = "json"


def _default_jobs() -> int:
    from htmp_cli.jobs import usable_cores

    return usable_cores()


@app.command()
@with_analysis_flags
def trajectory(
    analysis: AnalysisOptions,
    run: Path = typer.Argument(..., metavar="RUN", help="A training log written by htmp_cli.Monitor or a callback "
                               "(htmp.jsonl), or a run folder of checkpoints whose names carry the step "
                               "(checkpoint-<step>/, epoch=..-step=<step>.ckpt, model_<step>.safetensors)."),
    db: Path = typer.Option(Path("htmp-scan.sqlite"), "--db", help="The results store shared with htmp scan: "
                            "checkpoints analysed before are read from it."),
    jobs: int = typer.Option(_default_jobs(), "--jobs", "-j", help="Worker processes for the checkpoints "
                             "(one BLAS thread each). Default: the usable cores."),
    config: Optional[Path] = typer.Option(None, "--config", help="Rules to follow over the run (default: htmp.toml "
                                          "or [tool.htmp] in pyproject.toml, searched upward; else the built-in rules)."),
    format: TrajectoryFormat = typer.Option(TrajectoryFormat.text, "--format", "-f", help="text or json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the text or JSON here instead of stdout."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the metrics against step, by layer group, and "
                                        "the layers x steps phase map (.png or .svg; the map goes to <name>-phases)."),
    progress: Optional[bool] = PROGRESS,
    debug: bool = DEBUG,
) -> None:
    """How a training run's layers moved: means per step, phase transitions, layers that stayed
    random-like, and the first and last step at which each rule held.

    A checkpoint that fails to analyse is said and left out; the exit status is then 3.
    """

    def body() -> int:
        from htmp_cli import gate
        from htmp_cli import trajectory as runs

        config_path = config if config is not None else gate.find_config(Path.cwd())
        settings = gate.load_config(config_path) if config_path is not None else {}
        rules = gate.rules_from_config(settings, str(config_path or "built-in rules"))
        if plot is not None and plot.suffix.lower() not in (".png", ".svg"):
            raise HtmpError(f"--plot {plot}: the name must end in .png or .svg")
        if runs.is_run_log(run) and analysis != AnalysisOptions():
            raise HtmpError(f"{run} is a training log, analysed as it was recorded: the analysis flags apply "
                            "only to a folder of checkpoints")
        found = load_run(run, analysis, db, jobs, progress)
        spans = found.rule_spans(rules)
        if format is TrajectoryFormat.json:
            text = json.dumps(runs.to_dict(found, rules), indent=2, allow_nan=False) + "\n"
            if output is None:
                typer.echo(text, nl=False)
            else:
                write_text(output, text, "--output")
        else:
            from htmp_cli.trajectory_output import render_trajectory

            if output is None:
                render_trajectory(found, spans, stdout_console(piped_width=140))
            else:
                console = Console(file=io.StringIO(), width=140, color_system=None)
                render_trajectory(found, spans, console)
                write_text(output, console.file.getvalue(), "--output")
        if plot is not None:
            from htmp_cli.report.trajectory_plots import save_trajectory_figures

            for written in save_trajectory_figures(found, plot):
                typer.echo(f"wrote {written}", err=True)
        failed = any(reason.startswith("analysis failed") for _, reason in found.skipped)
        return EXIT_SCAN_FAILURES if failed else EXIT_OK

    raise typer.Exit(run_guarded(debug, body))


def load_run(path: Path, analysis: AnalysisOptions, db: Path, jobs: int, progress: Optional[bool]):  # type: ignore[no-untyped-def]
    """The trajectory of a training log, or of a run folder's checkpoints analysed through the store
    at `db`; raises HtmpError for a path that is neither, or a run with no analysed step."""
    from htmp_cli import trajectory as runs

    if runs.is_run_log(path):
        found = runs.from_log(path)
        if not found.steps:
            raise HtmpError(f"{path}: the training log holds no analysed step yet")
        return found
    if path.is_dir():
        found = _analyse_checkpoints(runs.find_checkpoints(path), analysis, db, jobs, progress)
        if not found.steps:
            raise HtmpError(f"{path}: no checkpoint could be analysed ({found.skipped[-1][1]})")
        return found
    if path.exists():
        raise HtmpError(f"{path}: neither a training log (htmp.jsonl) nor a folder of checkpoints")
    raise HtmpError(f"{path}: no such file or directory")


def _analyse_checkpoints(run, analysis: AnalysisOptions, db: Path, jobs: int, progress: Optional[bool]):  # type: ignore[no-untyped-def]
    from htmp_cli.scan.executors import LocalExecutor
    from htmp_cli.scan.runner import run_scan
    from htmp_cli.scan.store import ScanStore
    from htmp_cli.trajectory import from_checkpoints

    err_console = Console(stderr=True)
    units = tuple(unit for _, unit in run.checkpoints)

    def notice(text: str) -> None:
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    with ScanStore(db) as store:
        try:
            if err_console.is_terminal if progress is None else progress:
                from htmp_cli.progress import ScanProgress

                with ScanProgress(err_console) as listener:
                    result = run_scan(units, analysis, store, LocalExecutor(jobs), listener=listener, notice=notice)
            else:
                result = run_scan(units, analysis, store, LocalExecutor(jobs), notice=notice)
        except KeyboardInterrupt:
            typer.echo(f"htmp trajectory: interrupted; {db} keeps the checkpoints finished so far, and the same "
                       "command goes on from there", err=True)
            raise typer.Exit(130) from None
    step_of_unit = {unit.path: step for step, unit in run.checkpoints}
    reports, failures = {}, {}
    for row in result.rows:
        step = step_of_unit[row.unit.path]
        if row.result.status == "success" and row.result.report is not None:
            reports[step] = row.result.report
        else:
            failures[step] = row.result.error or "no report"
    return from_checkpoints(run, reports, failures)
