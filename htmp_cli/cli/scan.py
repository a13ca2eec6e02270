"""`htmp scan` and `htmp diff`: commands over many checkpoints, registered on the app of `cli.py`."""

from __future__ import annotations

import math
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from htmp_cli.cli.common import (EXIT_OK, EXIT_SCAN_FAILURES, app, default_jobs, flag_given, open_output,
                                 read_report_file, run_guarded, stdout_console, write_text)
from htmp_cli.cli.flags import ANALYSIS_FLAGS, DEBUG, PROGRESS, OutputFormat, with_analysis_flags
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.results import is_report_file


class ExportRows(str, Enum):
    checkpoint = "checkpoint"
    layer = "layer"


@app.command()
@with_analysis_flags
def scan(
    analysis: AnalysisOptions,
    paths: list[str] = typer.Argument(..., help="Folders (searched recursively), checkpoint files, globs "
                                      "('runs/*/last.pt', quoted) or list files (@runs.txt, or a .txt file: one path per line)."),
    db: Path = typer.Option(Path("htmp-scan.sqlite"), "--db", help="The results store (SQLite). A re-run reads "
                            "finished checkpoints from it instead of analysing them again."),
    jobs: int = typer.Option(default_jobs(), "--jobs", "-j", help="Worker processes (one BLAS thread each); "
                             "with --scheduler local, the number of Dask workers. Default: the usable cores."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", metavar="ADDRESS",
                                            help="Run on a Dask cluster: a scheduler address (tcp://host:8786), or 'local' "
                                                 "to start a LocalCluster of --jobs workers. Needs Dask (the dask extra of htmp-cli); "
                                                 "paths must be readable by the workers."),
    force: bool = typer.Option(False, "--force", help="Analyse every checkpoint again, replacing stored results."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Analyse checkpoints that failed before again."),
    full_hash: bool = typer.Option(False, "--full-hash", help="Identify checkpoints by a hash of every byte "
                                   "(default: whole files up to 256 MiB, a 4 MiB sample of larger ones)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV of quality labels: a checkpoint column, then one "
                                          "or more numeric columns (e.g. test_accuracy); prints rank correlations."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="With --labels: where the scatter plot of the strongest "
                                        "correlation goes (default: next to --db, <db name>-correlation.png)."),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the results to a .csv or .jsonl (JSON Lines) file."),
    export_rows: ExportRows = typer.Option(ExportRows.checkpoint, "--export-rows", help="One exported row per checkpoint or per layer."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a self-contained HTML report of the scan "
                                          "(sortable table, failures, correlations and the scatter plot)."),
    progress: Optional[bool] = PROGRESS,
    debug: bool = DEBUG,
) -> None:
    """Analyse many checkpoints in parallel into a resumable store; one row per checkpoint.

    A failed checkpoint is recorded with its error and the scan goes on; the exit status is then 3.
    """

    def body() -> int:
        from htmp_cli.scan.discovery import discover
        from htmp_cli.scan.executors import DaskExecutor, LocalExecutor
        from htmp_cli.scan.export import EXPORT_SUFFIXES
        from htmp_cli.scan.labels import read_labels
        from htmp_cli.scan.runner import run_scan
        from htmp_cli.scan.store import ScanStore

        # Everything that can be wrong with the request is said before hours of work, not after.
        label_data = read_labels(labels) if labels is not None else None
        if export is not None and export.suffix.lower() not in EXPORT_SUFFIXES:
            raise HtmpError(f"--export {export}: the name must end in .csv or .jsonl (JSON Lines)")
        if plot is not None and label_data is None:
            raise HtmpError("--plot draws the strongest label correlation: it needs --labels")
        executor = DaskExecutor(scheduler, jobs) if scheduler else LocalExecutor(jobs)
        err_console = Console(stderr=True)
        try:
            discovery = discover(paths)
        except KeyboardInterrupt:
            typer.echo(f"htmp scan: interrupted while looking for checkpoints; {db} is as it was", err=True)
            raise typer.Exit(130) from None

        def notice(text: str) -> None:  # above the progress bars when they are shown
            err_console.print(text, highlight=False, markup=False, soft_wrap=True)

        with ScanStore(db) as store:
            try:
                if err_console.is_terminal if progress is None else progress:
                    from htmp_cli.progress import ScanProgress

                    with ScanProgress(err_console) as listener:
                        result = run_scan(discovery.units, analysis, store, executor, force=force,
                                          retry_failed=retry_failed, full_hash=full_hash, listener=listener, notice=notice)
                else:
                    result = run_scan(discovery.units, analysis, store, executor, force=force,
                                      retry_failed=retry_failed, full_hash=full_hash, notice=notice)
            except KeyboardInterrupt:
                done = store.counts()["results"]
                typer.echo(f"htmp scan: interrupted; {db} holds {done} finished results, and the same command "
                           "goes on from there", err=True)
                raise typer.Exit(130) from None
        _report_scan(result, discovery, label_data, plot if plot is not None else db.with_name(db.stem + "-correlation.png"),
                     export, export_rows.value, report)
        return EXIT_SCAN_FAILURES if result.failed else EXIT_OK

    raise typer.Exit(run_guarded(debug, body))


def _report_scan(result, discovery, label_data, plot_path: Path, export: Optional[Path], export_rows: str,  # type: ignore[no-untyped-def]
                 html_path: Optional[Path]) -> None:
    from htmp_cli.scan.view import common_root, display_path, render_correlations, render_scan
    from htmp_cli.scan.export import export as write_export
    from htmp_cli.scan.labels import correlations, match_labels

    console = stdout_console(piped_width=200)
    root = common_root([row.unit.path for row in result.rows])
    matched: dict[int, dict[str, float | None]] = {}
    unmatched: list[str] = []
    if label_data is not None:
        matched, unmatched = match_labels(label_data, [row.unit.path for row in result.rows])
    render_scan(result, console, matched, label_data.columns if label_data is not None else ())
    if discovery.ignored:
        shown = ", ".join(display_path(p, root) for p in discovery.ignored[:4])
        console.print(f"{len(discovery.ignored)} files in the scanned folders are not checkpoints and were left out "
                      f"({shown}{' ...' if len(discovery.ignored) > 4 else ''})", style="dim", highlight=False, markup=False)
    found: list = []
    scatter = None
    if label_data is not None:
        usable = [k for k, row in enumerate(result.rows) if row.result.report is not None and k in matched]
        means = [result.rows[k].result.report.summary.means for k in usable]
        found = correlations(means, [matched[k] for k in usable], label_data.columns)
        render_correlations(found, console, unmatched, len(usable))
        best = next((c for c in found if math.isfinite(c.spearman_rho)), None)
        if best is not None:
            from htmp_cli.report.plots import correlation_figure, save

            points = [(means[i][best.metric], matched[k][best.label], display_path(result.rows[k].unit.path, root))
                      for i, k in enumerate(usable)
                      if means[i].get(best.metric) is not None and matched[k].get(best.label) is not None]
            x, y, names = (list(v) for v in zip(*points))
            short = [Path(n).stem for n in names]
            figure = correlation_figure(x, y, short, best.metric, best.label, best.spearman_rho, best.kendall_tau)
            save(figure, plot_path, "--plot", close=html_path is None)
            scatter = figure if html_path is not None else None  # drawn once: PNG here, SVG in the report
            console.print(f"scatter plot of the strongest correlation ({best.label} vs mean {best.metric}): {plot_path}",
                          highlight=False)
    if html_path is not None:
        from htmp_cli.cli.figures import scan_report

        scan_report(html_path, result, matched, label_data.columns if label_data is not None else (), found, scatter)
        console.print(f"HTML report: {html_path}", highlight=False)
    if export is not None:
        count = write_export(result, export, export_rows, matched)
        console.print(f"exported {count} rows (one per {export_rows}) to {export}", highlight=False)


@app.command()
@with_analysis_flags
def diff(
    analysis: AnalysisOptions,
    ctx: typer.Context,
    before: str = typer.Argument(..., help="The earlier checkpoint, or a JSON report of it (htmp analyze --format json)."),
    after: str = typer.Argument(..., help="The later checkpoint, or a JSON report of it."),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output view."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the output to FILE instead of stdout."),
    metric: list[str] = typer.Option([], "--metric", help="Metric columns of the table and Markdown views (repeatable; "
                                     "default alpha, alpha_weighted, log_norm, log_spectral_norm, stable_rank, kappa). "
                                     "JSON and CSV always hold every metric."),
    changed_only: bool = typer.Option(False, "--changed-only", help="Show only the layers whose phase changed."),
    debug: bool = DEBUG,
) -> None:
    """Per-layer change of every metric between two checkpoints or reports; layers that changed phase stand out."""

    def body() -> None:
        import json

        from htmp_cli.compare import diff_reports, diff_to_dict
        from htmp_cli.compare_output import DEFAULT_METRICS, diff_csv, diff_markdown, render_diff
        from htmp_cli.results import LAYER_METRICS

        for name in metric:
            if name not in LAYER_METRICS:
                raise HtmpError(f"--metric {name!r}: unknown (metrics: {', '.join(LAYER_METRICS)})")
        given = [name for name, _, _ in ANALYSIS_FLAGS if flag_given(ctx, name)]
        if given and is_report_file(before) and is_report_file(after):
            raise HtmpError(f"both inputs are saved reports: --{given[0].replace('_', '-')} applies only to checkpoints")
        reports = []
        for path, what in ((before, "before"), (after, "after")):
            if is_report_file(path):
                reports.append(read_report_file(Path(path), what))
            else:
                from htmp_cli.pipeline import analyze

                reports.append(analyze(path, analysis, keep_eigenvalues=True))  # for the KS distance of the ESDs
        result = diff_reports(*reports)
        shown = tuple(metric) or DEFAULT_METRICS
        if format is OutputFormat.table:
            if output is None:
                render_diff(result, stdout_console(piped_width=200), shown, changed_only)
            else:
                with open_output(output) as handle:
                    render_diff(result, Console(file=handle, width=200, no_color=True), shown, changed_only)
            return
        text = {OutputFormat.json: lambda: json.dumps(diff_to_dict(result), indent=2) + "\n",
                OutputFormat.csv: lambda: diff_csv(result),
                OutputFormat.md: lambda: diff_markdown(result, shown, changed_only)}[format]()
        if output is None:
            sys.stdout.write(text)
        else:
            write_text(output, text, "--output")

    run_guarded(debug, body)
