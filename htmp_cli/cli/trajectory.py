"""`htmp trajectory`: a training run (a monitor's log, or a folder of step checkpoints) as one trajectory."""

from __future__ import annotations

import io
import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from htmp_cli.cli.common import EXIT_OK, EXIT_SCAN_FAILURES, app, default_jobs, run_guarded, stdout_console, write_text
from htmp_cli.cli.flags import DEBUG, PROGRESS, with_analysis_flags
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.outputs import check_writable


class TrajectoryFormat(str, Enum):
    text = "text"
    json = "json"


@app.command()
@with_analysis_flags
def trajectory(
    analysis: AnalysisOptions,
    run: Path = typer.Argument(..., metavar="RUN", help="A training log written by htmp_cli.Monitor or a callback "
                               "(htmp.jsonl), or a run folder of checkpoints whose names carry the step "
                               "(checkpoint-<step>/, epoch=..-step=<step>.ckpt, model_<step>.safetensors)."),
    db: Path = typer.Option(Path("htmp-scan.sqlite"), "--db", help="The results store shared with htmp scan: "
                            "checkpoints analysed before are read from it."),
    jobs: int = typer.Option(default_jobs(), "--jobs", "-j", help="Worker processes for the checkpoints "
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
    random-like, and the first and last step at which each rule was broken.

    The analysis flags apply to a folder of checkpoints (without any, the configuration's
    [analysis] table does); a log was analysed as it was recorded.

    A checkpoint that fails to analyse is said and left out; the exit status is then 3.
    """

    def body() -> int:
        from htmp_cli import gate
        from htmp_cli import trajectory as runs

        gate_config, _ = gate.configuration(config, Path.cwd())
        if plot is not None:
            if plot.suffix.lower() not in (".png", ".svg"):
                raise HtmpError(f"--plot {plot}: the name must end in .png or .svg")
            check_writable(plot, "--plot")
        if output is not None:
            check_writable(output, "--output")
        if runs.is_run_log(run) and analysis != AnalysisOptions():
            raise HtmpError(f"{run} is a training log, analysed as it was recorded: the analysis flags apply "
                            "only to a folder of checkpoints")
        # No analysis flag given: the configuration's [analysis] table, as htmp check reads it.
        options = AnalysisOptions(**gate_config.analysis) if analysis == AnalysisOptions() else analysis
        found = load_run(run, options, db, jobs, progress)
        rules = gate_config.rules
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
    """htmp_cli.trajectory.load_run with the scan's progress bars on a terminal, and Ctrl-C said."""
    from htmp_cli import trajectory as runs

    err_console = Console(stderr=True)

    def notice(text: str) -> None:
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    try:
        if not runs.is_run_log(path) and path.is_dir() and (err_console.is_terminal if progress is None else progress):
            from htmp_cli.progress import ScanProgress

            with ScanProgress(err_console) as listener:
                return runs.load_run(path, analysis, db, jobs, listener=listener, notice=notice)
        return runs.load_run(path, analysis, db, jobs, notice=notice)
    except KeyboardInterrupt:
        typer.echo(f"htmp: interrupted; {db} keeps the checkpoints finished so far, and the same command goes on "
                   "from there", err=True)
        raise typer.Exit(130) from None
