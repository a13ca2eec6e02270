"""`htmp plot` and `htmp report`: figures and the self-contained HTML report, registered on the app of `cli.py`."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from htmp_cli.cli.common import app, read_report_file, run_guarded, write_text
from htmp_cli.cli.flags import DEBUG, PATH_HELP, PROGRESS, with_analysis_flags
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.outputs import check_writable
from htmp_cli.results import LayerResult, Report, is_report_file


class FigureFormat(str, Enum):
    png = "png"
    svg = "svg"


def _analysed(path: str, options: AnalysisOptions, progress: Optional[bool]) -> Report:
    """The report of a checkpoint with each layer's eigenvalues, with progress on a terminal."""
    from htmp_cli.pipeline import analyze

    err_console = Console(stderr=True)
    if err_console.is_terminal if progress is None else progress:
        from htmp_cli.progress import LayerProgress

        with LayerProgress(err_console) as listener:
            return analyze(path, options, listener, keep_eigenvalues=True)
    return analyze(path, options, keep_eigenvalues=True)


def _report_or_analysis(path: str, options: AnalysisOptions, progress: Optional[bool]) -> Report:
    """A saved report as it is (no eigenvalues), or a fresh analysis with them."""
    if is_report_file(path):
        if options != AnalysisOptions():
            raise HtmpError(f"{path} is a saved report, drawn as it was analysed: analysis options apply only to checkpoints")
        return read_report_file(Path(path), "report")
    return _analysed(path, options, progress)


def _with_spectra(report: Report) -> dict[int, LayerResult]:
    """The layers whose eigenvalues were kept, by index: a failed layer and a saved report have none."""
    return {k: layer for k, layer in enumerate(report.layers) if layer.eigenvalues is not None}


def _file_name(name: str) -> str:
    """A layer name as a file name: path separators and odd characters become '_'."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:180] or "layer"


@app.command()
@with_analysis_flags
def plot(
    analysis: AnalysisOptions,
    path: str = typer.Argument(..., metavar="PATH", help=PATH_HELP + " Or a JSON report (then only the overview can be drawn)."),
    layer: list[str] = typer.Option([], "--layer", metavar="REGEX", help="Draw the ESD of the layers whose name "
                                    "matches (repeatable; default: every layer)."),
    out: Path = typer.Option(Path("htmp-plots"), "--out", help="Folder for the figures (created if missing)."),
    format: FigureFormat = typer.Option(FigureFormat.png, "--format", "-f", help="png or svg."),
    progress: Optional[bool] = PROGRESS,
    debug: bool = DEBUG,
) -> None:
    """Figures: each layer's ESD with the fitted power law, MP and HTMP; alpha and kappa per layer for the model."""

    def body() -> None:
        from htmp_cli.report import plots

        patterns = []
        for pattern in layer:
            try:
                patterns.append(re.compile(pattern))
            except re.error as err:
                raise HtmpError(f"--layer {pattern!r} is not a valid regular expression: {err}") from None
        check_writable(out, "--out", folder=True)
        report = _report_or_analysis(path, analysis, progress)
        spectra = _with_spectra(report)
        chosen = [k for k, entry in enumerate(report.layers) if not patterns or any(p.search(entry.name) for p in patterns)]
        if patterns and not chosen:
            raise HtmpError(f"--layer: no layer matches {', '.join(layer)} (layers: "
                            f"{', '.join(entry.name for entry in report.layers[:6])}{' ...' if len(report.layers) > 6 else ''})")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise HtmpError(f"--out {out}: cannot create the folder: {err.strerror or err}") from None
        written = []
        overview = out / f"overview.{format.value}"
        plots.save(plots.overview_figure(report.layers, f"htmp: {report.source.path}"), overview, "--out")
        written.append(overview)
        missing = []
        for k in chosen:
            entry = report.layers[k]
            if k not in spectra:
                missing.append(entry.name)
                continue
            target = out / f"esd-{k:03d}-{_file_name(entry.name)}.{format.value}"
            plots.save(plots.esd_figure(entry), target, "--out")
            written.append(target)
        for target in written:
            typer.echo(str(target))
        if missing and spectra:
            typer.echo(f"htmp: no spectrum for {len(missing)} failed layers: {', '.join(missing[:5])}", err=True)
        elif missing:
            typer.echo("htmp: a JSON report holds no eigenvalues; pass the checkpoint to draw the ESD figures", err=True)

    run_guarded(debug, body)


@app.command()
@with_analysis_flags
def report(
    analysis: AnalysisOptions,
    path: str = typer.Argument(..., metavar="PATH", help=PATH_HELP + " Or a JSON report (then without the ESD figures)."),
    output: Path = typer.Option(Path("htmp-report.html"), "--output", "-o", help="The HTML file to write."),
    db: Path = typer.Option(Path("htmp-scan.sqlite"), "--db", help="For a training run given as a folder of step "
                            "checkpoints: the results store shared with htmp scan and htmp trajectory."),
    run: bool = typer.Option(False, "--run", help="Read a folder as a training run of step checkpoints even where it "
                             "is one checkpoint itself (a Trainer's output_dir holding the final model)."),
    config: Optional[Path] = typer.Option(None, "--config", help="For a training run: the rules whose steps the page "
                                          "shows (default: htmp.toml or [tool.htmp] in pyproject.toml, searched upward)."),
    progress: Optional[bool] = PROGRESS,
    debug: bool = DEBUG,
) -> None:
    """One self-contained HTML file: summary, phases, overview figure, a sortable and filterable layer table,
    and each layer's ESD figure on demand. It opens from disk in any browser and needs no network.

    Given a training run (a log of htmp_cli.Monitor, or a folder of step checkpoints), the page is the
    run's: metrics against step by layer group, the layers x steps phase map, the summary per step,
    the phase transitions and when each rule held."""

    def body() -> None:
        from htmp_cli.report import plots
        from htmp_cli.report.html import analysis_html

        check_writable(output, "--output")
        from htmp_cli import trajectory as runs

        if runs.is_run_log(Path(path)) or runs.is_run_folder(Path(path)) or (run and Path(path).is_dir()):
            _run_report(Path(path), analysis, db, progress, output, config)
            return
        report = _report_or_analysis(path, analysis, progress)
        spectra = _with_spectra(report)
        if not spectra and report.layers:
            typer.echo("htmp: a JSON report holds no eigenvalues: the page has no ESD figures; pass the checkpoint "
                       "to have them", err=True)
        overview = plots.svg_markup(plots.overview_figure(report.layers, f"htmp: {report.source.path}"))
        figures = {k: plots.svg_markup(plots.esd_figure(entry)) for k, entry in spectra.items()}
        write_text(output, analysis_html(report, overview, figures), "--output")
        typer.echo(f"{output} ({output.stat().st_size:,} bytes, {len(figures)} layer figures)")

    run_guarded(debug, body)


def _run_report(run: Path, analysis: AnalysisOptions, db: Path, progress: Optional[bool], output: Path,
                config: Optional[Path]) -> None:
    from htmp_cli import gate
    from htmp_cli.cli.common import default_jobs
    from htmp_cli.cli.trajectory import load_run
    from htmp_cli.report.html import trajectory_html
    from htmp_cli.report.trajectory_plots import trajectory_svgs

    if run.is_file() and analysis != AnalysisOptions():
        raise HtmpError(f"{run} is a training log, drawn as it was recorded: analysis options apply only to checkpoints")
    gate_config, _ = gate.configuration(config, Path.cwd())
    options = AnalysisOptions(**gate_config.analysis) if analysis == AnalysisOptions() else analysis
    found = load_run(run, options, db, default_jobs(), progress)
    metrics_svg, phases_svg = trajectory_svgs(found)
    write_text(output, trajectory_html(found, found.rule_spans(gate_config.rules), metrics_svg, phases_svg), "--output")
    typer.echo(f"{output} ({output.stat().st_size:,} bytes, a run of {len(found.steps)} steps)")


def scan_report(path: Path, result: Any, matched: dict[int, dict[str, float | None]], label_columns: tuple[str, ...],
                found: list, scatter: Any | None) -> None:
    """Write `htmp scan --report`: one row per checkpoint, the failures, the correlations and their scatter."""
    from dataclasses import asdict

    from htmp_cli.report import plots
    from htmp_cli.report.html import scan_html
    from htmp_cli.scan.view import PHASE_ABBREVIATIONS, common_root, display_path, failure_parts
    from htmp_cli.scan.export import checkpoint_row
    from htmp_cli.scan.labels import SUMMARY_METRICS

    root = common_root([row.unit.path for row in result.rows])
    rows = []
    for index, row in enumerate(result.rows):
        record = checkpoint_row(row, matched.get(index))
        record["checkpoint"] = display_path(row.unit.path, root)
        record["phases"] = " ".join(f"{PHASE_ABBREVIATIONS[k.removeprefix('phase_')]} {v}" for k, v in record.items()
                                    if k.startswith("phase_") and v)
        rows.append(record)
    columns = [("checkpoint", "checkpoint", False), ("status", "status", False), ("layers", "n_layers", True)]
    columns += [(f"mean {m}", f"mean_{m}", True) for m in SUMMARY_METRICS]
    columns += [("phases", "phases", False)] + [(c, c, True) for c in label_columns] + [("seconds", "seconds", True)]
    notes = [f"{len(result.rows)} checkpoints under {root}" if root else f"{len(result.rows)} checkpoints",
             "phases: " + ", ".join(f"{abbr} {name}" for name, abbr in PHASE_ABBREVIATIONS.items())]
    failures = [failure_parts(row, root) for row in result.failed]
    html = scan_html("htmp scan report", columns, rows, failures, [asdict(c) for c in found],
                     plots.svg_markup(scatter) if scatter is not None else None, notes)
    write_text(path, html, "--report")
