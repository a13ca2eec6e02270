"""htmp analyze, htmp check and htmp ls."""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from htmp_cli.cli.common import (EXIT_GATE_FAILED, EXIT_OK, StdoutConsole, app, flag_given, open_output,
                                 read_report_file, run_guarded, stdout_console, write_text)
from htmp_cli.cli.flags import (CONV, DEBUG, DEVICE, EXCLUDE, FIT, INCLUDE, JOBS, MIN_DIM, PATH_HELP,
                                PRECISION, PROGRESS, SKIP_EMBEDDINGS, SPLIT_FUSED, ConvMode, Device,
                                FitMethod, ListFormat, OutputFormat, Precision, selection_fields, with_analysis_flags)
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.outputs import check_writable
from htmp_cli.results import Report, is_report_file

@app.command()
@with_analysis_flags
def analyze(
    analysis: AnalysisOptions,
    path: str = typer.Argument(..., metavar="PATH", help=PATH_HELP),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output view."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the output to FILE instead of stdout."),
    wide: bool = typer.Option(False, "--wide", help="Table: every column, however wide (piped or -o: always)."),
    columns: Optional[str] = typer.Option(None, "--columns", metavar="NAME,...",
                                          help="Table: exactly these columns, in this order (names: "
                                               "name, shape, alpha, kappa, phase, warn, warning, D, tail, reason, "
                                               "alpha_weighted, log_norm, log_spectral_norm, stable_rank, kind, dtype)."),
    base: Optional[str] = typer.Option(None, "--base", metavar="MODEL",
                                       help="PATH is a LoRA adapter: also analyse the weights it changes in MODEL, "
                                            "before and after merging, and show the change of every metric."),
    jobs: Optional[int] = JOBS,
    progress: Optional[bool] = PROGRESS,
    debug: bool = DEBUG,
) -> None:
    """Analyse every weight matrix of a checkpoint: tail fit, MP, HTMP, phase, scale metrics, summary."""

    def body() -> None:
        from htmp_cli.pipeline import analyze as run_analysis
        from htmp_cli.report.table import parse_columns

        chosen = parse_columns(columns) if columns is not None else None
        if chosen is not None and format is not OutputFormat.table:
            raise HtmpError("--columns applies to --format table")
        if output is not None:
            check_writable(output, "--output")
        if is_report_file(path):
            # A saved report is shown as saved: nothing to compute, and no option can change it.
            if analysis != AnalysisOptions():
                raise HtmpError(f"{path} is a saved report, shown as it was analysed: analysis options apply "
                                "only to checkpoints")
            if base is not None:
                raise HtmpError(f"{path} is a saved report: --base applies to a LoRA adapter's checkpoint")
            emit(read_report_file(Path(path), "report"), format, output, wide=wide, columns=chosen)
            return

        err_console = Console(stderr=True)
        show_progress = err_console.is_terminal if progress is None else progress
        listener = None
        with ExitStack() as stack:
            if show_progress:
                from htmp_cli.progress import LayerProgress

                listener = stack.enter_context(LayerProgress(err_console))
            if base is not None:
                from htmp_cli.adapter import analyze_adapter

                result = analyze_adapter(path, base, analysis, listener, jobs=jobs)
            else:
                report = run_analysis(path, analysis, listener, jobs=jobs)
        if base is not None:
            emit_adapter(result, format, output, wide=wide, columns=chosen)
        else:
            emit(report, format, output, wide=wide, columns=chosen)

    run_guarded(debug, body)


@app.command()
def check(
    ctx: typer.Context,
    path: str = typer.Argument(..., metavar="PATH", help=PATH_HELP + " Or a JSON report written by htmp analyze --format json, "
                               "or a training run: a log of htmp_cli.Monitor (htmp.jsonl) or a folder of step checkpoints."),
    config: Optional[Path] = typer.Option(None, "--config", help="Rules file (default: htmp.toml or [tool.htmp] in "
                                          "pyproject.toml, searched from the current folder upward)."),
    no_defaults: bool = typer.Option(False, "--no-defaults", help="Leave out the built-in rules (overrides check.defaults)."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML file: one test case per rule and layer."),
    summary: Optional[Path] = typer.Option(None, "--summary", help="Write a Markdown summary (for $GITHUB_STEP_SUMMARY)."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="An earlier JSON report of the same architecture: "
                                            "apply the drift rules (check.drift, or the built-in ones) to it."),
    db: Path = typer.Option(Path("htmp-scan.sqlite"), "--db", help="For a training run given as a folder of step "
                            "checkpoints: the results store shared with htmp scan and htmp trajectory."),
    run: bool = typer.Option(False, "--run", help="Read a folder as a training run of step checkpoints even where it "
                             "is one checkpoint itself (a Trainer's output_dir holding the final model)."),
    min_dim: int = MIN_DIM,
    precision: Precision = PRECISION,
    fit: FitMethod = FIT,
    conv: ConvMode = CONV,
    split_fused: bool = SPLIT_FUSED,
    skip_embeddings: bool = SKIP_EMBEDDINGS,
    include: list[str] = INCLUDE,
    exclude: list[str] = EXCLUDE,
    device: Device = DEVICE,
    jobs: Optional[int] = JOBS,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """CI gate: analyse a checkpoint (or read a report) and apply rules; exit 1 when an error-level rule fails.

    Analysis options come from the configuration's [analysis] table; flags given here override them.
    """

    def body() -> int:
        from htmp_cli import gate

        gate_config, _ = gate.configuration(config, Path.cwd(), no_defaults)
        flags = {**selection_fields(min_dim, conv, split_fused, skip_embeddings, include, exclude),
                 "precision": precision.value, "fit": fit.value, "device": device.value}
        given = {name: value for name, value in flags.items() if flag_given(ctx, name)}
        options = AnalysisOptions(**{**gate_config.analysis, **given})
        for target, flag in ((junit, "--junit"), (summary, "--summary")):
            if target is not None:
                check_writable(target, flag)
        earlier = read_report_file(baseline, "--baseline") if baseline is not None else None
        from htmp_cli import trajectory as runs

        if runs.is_run_log(Path(path)) or runs.is_run_folder(Path(path)) or (run and Path(path).is_dir()):
            fixed = [name for name in given if name not in gate.SELECTION_OPTIONS]
            if runs.is_run_log(Path(path)) and fixed:
                raise HtmpError(f"{path} is a training log, analysed as it was recorded: --{fixed[0].replace('_', '-')} "
                                "applies only to checkpoints (the selection options --include, --exclude, "
                                "--skip-embeddings and --min-dim apply to logs too)")
            return _check_run(Path(path), options, gate_config, earlier, db, jobs, junit, summary)
        steps_under = runs.holds_step_checkpoints(Path(path)) if Path(path).is_dir() else 0
        if steps_under:
            typer.echo(f"htmp: note: {path} is one checkpoint, and also holds {steps_under} step checkpoints: "
                       "--run checks them as a training run", err=True)
        if gate_config.trend_rules:
            typer.echo(f"htmp: note: the {len(gate_config.trend_rules)} trend rule(s) apply to training runs "
                       f"(a log or a folder of step checkpoints), not to {path}", err=True)
        if is_report_file(path):
            fixed = [name for name in given if name not in gate.SELECTION_OPTIONS]
            if fixed:
                raise HtmpError(f"{path} is a saved report: --{fixed[0].replace('_', '-')} applies only when htmp check "
                                "analyses a checkpoint (the selection options --include, --exclude, --skip-embeddings "
                                "and --min-dim apply to reports too)")
            saved = read_report_file(Path(path), "report")
            _note_fixed_options(saved, gate_config.analysis, path)
            report = gate.select_layers(saved, options)
        else:
            from htmp_cli.pipeline import analyze as run_analysis

            report = run_analysis(path, options, jobs=jobs)
        verdict = gate.evaluate(report, gate_config.rules)
        if earlier is not None:
            drift_rules = gate_config.drift_rules if gate_config.drift_rules is not None else gate.DEFAULT_DRIFT_RULES
            verdict = gate.combine(verdict, gate.evaluate_drift(report, earlier, drift_rules))
        return _say_verdict(verdict, report.source.path, junit, summary)

    code = run_guarded(debug, body)
    raise typer.Exit(code)


def _say_verdict(verdict, source: str, junit: Optional[Path], summary: Optional[Path]) -> int:  # type: ignore[no-untyped-def]
    from htmp_cli.gate_output import github_annotations, render_verdict, to_junit, to_markdown

    render_verdict(verdict, source, stdout_console(piped_width=160))
    if junit is not None:
        write_text(junit, to_junit(verdict, source), "--junit")
    if summary is not None:
        write_text(summary, to_markdown(verdict, source), "--summary")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(verdict, source):
            print(line)
    return EXIT_OK if verdict.passed else EXIT_GATE_FAILED


def _check_run(path: Path, options: AnalysisOptions, gate_config, earlier: Optional[Report], db: Path,  # type: ignore[no-untyped-def]
               jobs: Optional[int], junit: Optional[Path], summary: Optional[Path]) -> int:
    """`htmp check` of a training run: a log, or a folder of step checkpoints (htmp_cli.trajectory_check)."""
    from htmp_cli import gate
    from htmp_cli.cli.trajectory import load_run
    from htmp_cli.jobs import usable_cores
    from htmp_cli.trajectory_check import evaluate_run

    if earlier is not None:
        raise HtmpError(f"--baseline compares one checkpoint with another; {path} is a training run "
                        "(its trend rules, [[check.trend]], compare its first and last steps)")
    found = load_run(path, options, db, jobs or usable_cores(), progress=False)
    if found.kind == "log":  # the selection applies to a log's layers as to a saved report's
        found = replace(found, steps=tuple(replace(s, report=gate.select_layers(s.report, options)) for s in found.steps))
    verdict = evaluate_run(found, gate_config.rules, gate_config.trend_rules)
    return _say_verdict(verdict, f"{found.source} ({len(found.steps)} steps, {found.steps[0].step} to "
                                 f"{found.steps[-1].step})", junit, summary)


def _note_fixed_options(saved: Report, configured: dict, path: str) -> None:
    """A configured option that shapes spectra cannot change a saved report: say so rather than ignore it."""
    from htmp_cli import gate

    recorded = saved.options.to_dict()
    for name, value in configured.items():
        value = value.to_dict() if hasattr(value, "to_dict") else list(value) if isinstance(value, tuple) else value
        if name not in gate.SELECTION_OPTIONS and name in recorded and recorded[name] != value:
            typer.echo(f"htmp: note: {path} was analysed with {name} = {recorded[name]!r}; the configured "
                       f"{value!r} applies only when htmp check analyses a checkpoint", err=True)


def emit(report: Report, format: OutputFormat, output: Optional[Path], wide: bool = False,
         columns: Optional[tuple[str, ...]] = None) -> None:
    from htmp_cli.report import formats

    if format is OutputFormat.table:
        from htmp_cli.report.table import render_table

        if output is None:
            console = StdoutConsole()
            # Piped or redirected, the table is complete: nobody's terminal width to fit.
            render_table(report, console, complete=wide or not console.is_terminal, columns=columns)
        else:
            with open_output(output) as handle:
                render_table(report, Console(file=handle, no_color=True), complete=True, columns=columns)
        return
    text = {OutputFormat.json: formats.to_json, OutputFormat.csv: formats.to_csv,
            OutputFormat.md: formats.to_markdown}[format](report)
    _write(text, output)


def _write(text: str, output: Optional[Path]) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        with open_output(output) as handle:
            handle.write(text)


def emit_adapter(result, format: OutputFormat, output: Optional[Path], wide: bool = False,  # type: ignore[no-untyped-def]
                 columns: Optional[tuple[str, ...]] = None) -> None:
    """An adapter against its base: the update's report, then the base -> merged change per module.
    JSON holds all three reports and the diff; CSV is the diff's rows (every metric before, after, delta)."""
    from htmp_cli.compare_output import DEFAULT_METRICS, diff_csv, diff_markdown, render_diff
    from htmp_cli.report import formats

    unpaired = [f"not in the base: {name} ({why})" for name, why in result.unpaired]
    if format is OutputFormat.table:
        from htmp_cli.report.table import render_table

        with ExitStack() as stack:
            if output is None:
                console: Console = StdoutConsole()
                complete = wide or not console.is_terminal
            else:
                console, complete = Console(file=stack.enter_context(open_output(output)), no_color=True), True
            render_table(result.update, console, complete=complete, columns=columns)
            render_diff(result.diff, console, DEFAULT_METRICS, changed_only=False)
            for line in unpaired:
                console.print(line, highlight=False)
        return
    text = {OutputFormat.json: result.to_json, OutputFormat.csv: lambda: diff_csv(result.diff),
            OutputFormat.md: lambda: formats.to_markdown(result.update) + "\n"
            + diff_markdown(result.diff, DEFAULT_METRICS, False) + "".join(f"\n{line}\n" for line in unpaired)}[format]()
    _write(text, output)


@app.command("ls")
def list_tensors(
    path: str = typer.Argument(..., metavar="PATH", help=PATH_HELP),
    min_dim: int = MIN_DIM,
    conv: ConvMode = CONV,
    split_fused: bool = SPLIT_FUSED,
    skip_embeddings: bool = SKIP_EMBEDDINGS,
    include: list[str] = INCLUDE,
    exclude: list[str] = EXCLUDE,
    format: ListFormat = typer.Option(ListFormat.table, "--format", "-f", help="Output view."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """List tensors, shapes and dtypes, and what would be analysed or skipped (headers only)."""

    def body() -> None:
        from htmp_cli.loaders import open_checkpoint, plan_checkpoint

        options = AnalysisOptions(**selection_fields(min_dim, conv, split_fused, skip_embeddings, include, exclude))
        checkpoint = open_checkpoint(path)
        matrices, skipped = plan_checkpoint(checkpoint, options.matrix_rules)
        verdict = _ls_verdicts(matrices)
        verdict.update({s.name: f"skip: {s.reason}" for s in skipped})
        rows = [(e.name, list(e.shape), e.dtype, verdict[e.name]) for e in checkpoint.tensors]
        listed = {e.name for e in checkpoint.tensors}
        rows += [(s.name, list(s.shape), s.dtype, f"skip: {s.reason}") for s in checkpoint.skipped if s.name not in listed]
        if format is ListFormat.json:
            sys.stdout.write(json.dumps({
                "source": {"path": str(checkpoint.path), "format": checkpoint.format,
                           "size_bytes": checkpoint.size_bytes, "fingerprint": checkpoint.fingerprint,
                           "notes": list(checkpoint.notes)},
                "tensors": [{"name": n, "shape": s, "dtype": d, "action": a} for n, s, d, a in rows],
                "matrices": [{"name": m.name, "tensor": m.tensor, "kind": m.kind, "shape": list(m.shape),
                              "slices": m.slices, "note": m.note} for m in matrices],
            }, indent=2) + "\n")
            return
        table = Table(title=f"{checkpoint.path} ({checkpoint.format}, {checkpoint.size_bytes:,} bytes)",
                      title_justify="left", header_style="bold")
        console = StdoutConsole()
        cells = [(name, "x".join(map(str, shape)) or "scalar", dtype, action) for name, shape, dtype, action in rows]
        for column in ("tensor", "shape", "dtype", "action"):
            # On a terminal long names fold to stay visible; piped, every row stays one line for grep.
            table.add_column(column, overflow="fold", no_wrap=not console.is_terminal)
        for name, shape, dtype, action in cells:
            table.add_row(name, shape, dtype, action, style="dim" if action.startswith("skip") else None)
        if not console.is_terminal:
            widest = [max([len(header), *(len(row[k]) for row in cells)]) for k, header in
                      enumerate(("tensor", "shape", "dtype", "action"))]
            console.width = max(console.width, sum(widest) + 3 * len(widest) + 1)  # cell padding and rules
        console.print(table)
        for note in checkpoint.notes:
            console.print(f"note: {note}", highlight=False)
        console.print(f"{len(matrices)} matrices to analyse, {len(skipped)} tensors skipped", highlight=False)

    run_guarded(debug, body)


def _ls_verdicts(matrices) -> dict[str, str]:  # type: ignore[no-untyped-def]
    by_tensor: dict[str, list] = {}
    for m in matrices:
        by_tensor.setdefault(m.tensor, []).append(m)
    verdicts = {}
    for tensor, specs in by_tensor.items():
        first = specs[0]
        shape = "x".join(map(str, first.shape))
        if first.factor is not None:
            pooled = f", {first.slices} slices pooled" if first.slices > 1 else ""
            verdicts[tensor] = f"analyse (update {first.name}, {first.kind} {shape}{pooled}: scale {first.scale:g} * B A)"
            verdicts[first.factor.name] = f"A factor of the update {first.name}"
            continue
        if first.kind == "expert" and len(specs) > 1:
            text = f"analyse ({len(specs)} experts of {shape})"
        elif len(specs) > 1:
            text = f"analyse ({first.kind}: {', '.join(s.name.rsplit(':', 1)[-1] for s in specs)} of {shape})"
        elif first.slices > 1:
            text = f"analyse ({first.kind}: {first.slices} slices of {shape}, pooled)"
        elif first.shape != first.entry.shape:
            text = f"analyse ({first.kind} as {shape})"
        else:
            text = f"analyse ({first.kind})"
        verdicts[tensor] = text + (f"; {first.note}" if first.note and len(specs) == 1 else "")
    return verdicts

