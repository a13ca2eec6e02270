"""The `htmp` command line: thin typed commands over the pipeline, one exit-code policy.

Exit codes: 0 success; 1 a gate failed; 2 usage error or unreadable input (one line on stderr, a
traceback only with --debug); 3 a scan finished with failures.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import typing
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from htmp_cli import __version__
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.outputs import check_writable

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_SCAN_FAILURES = 0, 1, 2, 3

app = typer.Typer(
    name="htmp",
    help="Heavy-tail and random-matrix diagnostics for trained model weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain: "[analysis]" and "[tool.htmp]" are TOML tables, not rich markup.
    rich_markup_mode=None,
)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


class ListFormat(str, Enum):
    table = "table"
    json = "json"


class Precision(str, Enum):
    float64 = "float64"
    float32 = "float32"


class FitMethod(str, Enum):
    csn = "csn"
    ww = "ww"


class Backend(str, Enum):
    auto = "auto"
    numpy = "numpy"
    torch = "torch"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ConvMode(str, Enum):
    pooled = "pooled"
    unfold = "unfold"


_PATH_HELP = ("A checkpoint: .safetensors, PyTorch .pt/.pth/.bin, .gguf, a shard index, "
              "or a folder holding one (Hugging Face or llama.cpp layout).")
_MIN_DIM = typer.Option(10, "--min-dim", help="Smallest side of a matrix to analyse (10 = the default min-tail).")
_CONV = typer.Option(ConvMode.pooled, "--conv",
                     help="Conv kernels: pooled = eigenvalues of the (out, in) slices pooled into one ESD; "
                          "unfold = the (out, in*kernel) matrix.")
_SPLIT_FUSED = typer.Option(False, "--split-fused",
                            help="Split fused q/k/v projections (c_attn, qkv_proj, Wqkv, ...) into q, k and v where the shape allows.")
_PRECISION = typer.Option(Precision.float64, "--precision", help="Gram product and eigensolver precision; float32 is faster.")
_FIT = typer.Option(FitMethod.csn, "--fit", help="csn: Clauset-Shalizi-Newman fit; ww: WeightWatcher 0.7.7's fit, reproduced.")
_SKIP_EMBEDDINGS = typer.Option(False, "--skip-embeddings", help="Leave embeddings and output heads out.")
_INCLUDE = typer.Option([], "--include", metavar="REGEX", help="Analyse only tensors whose name matches (repeatable).")
_EXCLUDE = typer.Option([], "--exclude", metavar="REGEX", help="Leave out tensors whose name matches (repeatable).")
_MIN_TAIL = typer.Option(10, "--min-tail", help="Smallest tail the csn fit may choose.")
_BACKEND = typer.Option(Backend.auto, "--backend", help="Eigensolver: numpy, torch, or auto (torch from a smaller side of 1024, if installed).")
_DEVICE = typer.Option(Device.auto, "--device",
                       help="Where spectra are computed: cuda = torch on the GPU (exit 2 without one); auto = the GPU "
                            "for matrices with a side of 1024 or more when torch sees one, else the CPU; cpu.")
_JOBS = typer.Option(None, "--jobs", "-j", min=1,
                     help="Processes analysing layers in parallel, one BLAS thread each (default: the usable cores "
                          "when the checkpoint is large enough to gain; a mid-sized one is fitted in a second "
                          "process while this one solves; 1: this process alone).")
_HTMP_FIT = typer.Option(True, "--htmp/--no-htmp", help="Fit the HTMP law (both orientations) to every layer.")
_THRESHOLD = typer.Option([], "--threshold", metavar="NAME=VALUE",
                          help="Override a phase-rule threshold (repeatable); see the README for the names.")
_PROGRESS = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on when stderr is a terminal).")
_DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")


class _StdoutConsole(Console):
    """rich exits with status 1 on a broken pipe, which here means "gate failed"; let ours handle it."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def _stdout_console(piped_width: int) -> _StdoutConsole:
    """The terminal's own width on a terminal; when piped, wide enough that rows do not fold."""
    console = _StdoutConsole()
    return console if console.is_terminal else _StdoutConsole(width=max(console.width, piped_width))


def _selection(min_dim: int, conv: ConvMode, split_fused: bool, skip_embeddings: bool,
               include: list[str], exclude: list[str]) -> dict[str, object]:
    """The AnalysisOptions fields of the tensor-selection flags that analyze, ls and check share."""
    return dict(min_dim=min_dim, conv=conv.value, split_fused=split_fused, skip_embeddings=skip_embeddings,
                include=tuple(include), exclude=tuple(exclude))


def _analysis_options(precision: Precision, fit: FitMethod, min_tail: int, backend: Backend, device: Device,
                      htmp_fit: bool, threshold: list[str], selection: dict[str, object]) -> AnalysisOptions:
    """AnalysisOptions from the analysis flags."""
    return AnalysisOptions(precision=precision.value, fit=fit.value, min_tail=min_tail, backend=backend.value,
                           device=device.value, htmp=htmp_fit, thresholds=_parse_thresholds(threshold), **selection)


# Every flag that shapes an analysis: (parameter name, type, option).
ANALYSIS_FLAGS = (
    ("min_dim", int, _MIN_DIM), ("conv", ConvMode, _CONV), ("split_fused", bool, _SPLIT_FUSED),
    ("skip_embeddings", bool, _SKIP_EMBEDDINGS), ("include", list[str], _INCLUDE), ("exclude", list[str], _EXCLUDE),
    ("precision", Precision, _PRECISION), ("fit", FitMethod, _FIT), ("min_tail", int, _MIN_TAIL),
    ("backend", Backend, _BACKEND), ("device", Device, _DEVICE), ("htmp_fit", bool, _HTMP_FIT),
    ("threshold", list[str], _THRESHOLD),
)


def with_analysis_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command every analysis flag (before its --progress and --debug); it receives them as
    one `analysis: AnalysisOptions` argument. analyze, scan, diff, plot and report share them this way."""
    hints = typing.get_type_hints(command)  # resolved in the command's own module
    own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values()
           if p.name != "analysis"]
    last = [p for p in own if p.name in ("progress", "debug")]
    flags = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=kind)
             for name, kind, option in ANALYSIS_FLAGS]
    parameters = [p for p in own if p not in last] + flags + last

    @functools.wraps(command)
    def wrapper(**values: object) -> None:
        given = {name: values.pop(name) for name, _, _ in ANALYSIS_FLAGS}
        try:
            options = _analysis_options(given["precision"], given["fit"], given["min_tail"], given["backend"],  # type: ignore[arg-type]
                                        given["device"], given["htmp_fit"], given["threshold"],  # type: ignore[arg-type]
                                        _selection(given["min_dim"], given["conv"], given["split_fused"],  # type: ignore[arg-type]
                                                   given["skip_embeddings"], given["include"], given["exclude"]))  # type: ignore[arg-type]
        except HtmpError as err:
            _fail(str(err))
        return command(analysis=options, **values)

    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"htmp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Heavy-tail and random-matrix diagnostics for trained model weights."""


def _fail(message: str) -> None:
    typer.echo(f"htmp: error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _run_guarded(debug: bool, body):  # type: ignore[no-untyped-def]
    try:
        return body()
    except HtmpError as err:
        if debug:
            raise
        _fail(str(err))
    except (typer.Exit, KeyboardInterrupt):
        raise
    except BrokenPipeError:
        # The reader went away (`htmp analyze ... | head`): nothing left to say, and nobody to say it to.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(EXIT_OK) from None
    except MemoryError:
        if debug:
            raise
        _fail("out of memory")
    except Exception as err:  # a bug: say so in one line, the traceback is one flag away
        if debug:
            raise
        _fail(f"internal error: {type(err).__name__}: {err} (run with --debug for the traceback)")


@app.command()
@with_analysis_flags
def analyze(
    analysis: AnalysisOptions,
    path: str = typer.Argument(..., metavar="PATH", help=_PATH_HELP),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output view."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the output to FILE instead of stdout."),
    wide: bool = typer.Option(False, "--wide", help="Table: every column, however wide (piped or -o: always)."),
    columns: Optional[str] = typer.Option(None, "--columns", metavar="NAME,...",
                                          help="Table: exactly these columns, in this order (names: "
                                               "name, shape, alpha, kappa, phase, warn, warning, D, tail, reason, "
                                               "alpha_weighted, log_norm, log_spectral_norm, stable_rank, kind, dtype)."),
    jobs: Optional[int] = _JOBS,
    progress: Optional[bool] = _PROGRESS,
    debug: bool = _DEBUG,
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
        if _is_report_path(path):
            # A saved report is shown as saved: nothing to compute, and no option can change it.
            if analysis != AnalysisOptions():
                raise HtmpError(f"{path} is a saved report, shown as it was analysed: analysis options apply "
                                "only to checkpoints")
            _emit(_read_report(Path(path), "report"), format, output, wide=wide, columns=chosen)
            return

        err_console = Console(stderr=True)
        show_progress = err_console.is_terminal if progress is None else progress
        if show_progress:
            from htmp_cli.progress import LayerProgress

            with LayerProgress(err_console) as listener:
                report = run_analysis(path, analysis, listener, jobs=jobs)
        else:
            report = run_analysis(path, analysis, jobs=jobs)
        _emit(report, format, output, wide=wide, columns=chosen)

    _run_guarded(debug, body)


@app.command()
def check(
    ctx: typer.Context,
    path: str = typer.Argument(..., metavar="PATH", help=_PATH_HELP + " Or a JSON report written by htmp analyze --format json."),
    config: Optional[Path] = typer.Option(None, "--config", help="Rules file (default: htmp.toml or [tool.htmp] in "
                                          "pyproject.toml, searched from the current folder upward)."),
    no_defaults: bool = typer.Option(False, "--no-defaults", help="Leave out the built-in rules (overrides check.defaults)."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML file: one test case per rule and layer."),
    summary: Optional[Path] = typer.Option(None, "--summary", help="Write a Markdown summary (for $GITHUB_STEP_SUMMARY)."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="An earlier JSON report of the same architecture: "
                                            "apply the drift rules (check.drift, or the built-in ones) to it."),
    min_dim: int = _MIN_DIM,
    precision: Precision = _PRECISION,
    fit: FitMethod = _FIT,
    conv: ConvMode = _CONV,
    split_fused: bool = _SPLIT_FUSED,
    skip_embeddings: bool = _SKIP_EMBEDDINGS,
    include: list[str] = _INCLUDE,
    exclude: list[str] = _EXCLUDE,
    device: Device = _DEVICE,
    jobs: Optional[int] = _JOBS,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """CI gate: analyse a checkpoint (or read a report) and apply rules; exit 1 when an error-level rule fails.

    Analysis options come from the configuration's [analysis] table; flags given here override them.
    """

    def body() -> int:
        from htmp_cli import gate
        from htmp_cli.report.verdict import github_annotations, render_verdict, to_junit, to_markdown

        config_path = config if config is not None else gate.find_config(Path.cwd())
        settings = gate.load_config(config_path) if config_path is not None else {}
        if no_defaults:
            settings = {**settings, "check": {**settings.get("check", {}), "defaults": False}}
        gate_config = gate.parse_config(settings, str(config_path or "built-in rules"))
        flags = {**_selection(min_dim, conv, split_fused, skip_embeddings, include, exclude),
                 "precision": precision.value, "fit": fit.value, "device": device.value}
        given = {name: value for name, value in flags.items() if _given(ctx, name)}
        options = AnalysisOptions(**{**gate_config.analysis, **given})
        for target, flag in ((junit, "--junit"), (summary, "--summary")):
            if target is not None:
                check_writable(target, flag)
        earlier = _read_report(baseline, "--baseline") if baseline is not None else None
        if _is_report_path(path):
            fixed = [name for name in given if name not in gate.SELECTION_OPTIONS]
            if fixed:
                raise HtmpError(f"{path} is a saved report: --{fixed[0].replace('_', '-')} applies only when htmp check "
                                "analyses a checkpoint (the selection options --include, --exclude, --skip-embeddings "
                                "and --min-dim apply to reports too)")
            saved = _read_report(Path(path), "report")
            _note_fixed_options(saved, gate_config.analysis, path)
            report = gate.select_layers(saved, options)
        else:
            from htmp_cli.pipeline import analyze as run_analysis
            from htmp_cli.results import report_to_dict

            report = report_to_dict(run_analysis(path, options, jobs=jobs))
        verdict = gate.evaluate(report, gate_config.rules)
        if earlier is not None:
            drift_rules = gate_config.drift_rules if gate_config.drift_rules is not None else gate.DEFAULT_DRIFT_RULES
            verdict = gate.combine(verdict, gate.evaluate_drift(report, earlier, drift_rules))
        source = report["source"]["path"]
        render_verdict(verdict, source, _stdout_console(piped_width=160))
        if junit is not None:
            _write_text(junit, to_junit(verdict, source), "--junit")
        if summary is not None:
            _write_text(summary, to_markdown(verdict, source), "--summary")
        if os.environ.get("GITHUB_ACTIONS") == "true":
            for line in github_annotations(verdict, source):
                print(line)
        return EXIT_OK if verdict.passed else EXIT_GATE_FAILED

    code = _run_guarded(debug, body)
    raise typer.Exit(code)


def _note_fixed_options(saved: dict, configured: dict, path: str) -> None:
    """A configured option that shapes spectra cannot change a saved report: say so rather than ignore it."""
    from htmp_cli import gate

    recorded = saved.get("options") or {}
    for name, value in configured.items():
        value = value.to_dict() if hasattr(value, "to_dict") else list(value) if isinstance(value, tuple) else value
        if name not in gate.SELECTION_OPTIONS and name in recorded and recorded[name] != value:
            typer.echo(f"htmp: note: {path} was analysed with {name} = {recorded[name]!r}; the configured "
                       f"{value!r} applies only when htmp check analyses a checkpoint", err=True)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether a flag was given on the command line (rather than left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _read_report(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HtmpError(f"{what} {path}: not a readable JSON report ({err})") from None
    from htmp_cli.results import SCHEMA, is_report

    if not is_report(data):
        raise HtmpError(f"{what} {path}: not an htmp report (expected schema {SCHEMA!r})")
    return data


def _is_report_path(path: str) -> bool:
    """A file written by htmp analyze --format json, by its first bytes (any other JSON is left to the
    loaders, which say what it looks like)."""
    candidate = Path(path)
    if candidate.name.endswith(".index.json") or not candidate.is_file():
        return False
    try:
        with open(candidate, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    from htmp_cli.loaders import starts_an_htmp_report

    if starts_an_htmp_report(head):
        return True
    if candidate.suffix != ".json" or head.lstrip()[:1] != b"{":
        return False
    try:  # a report whose keys were reordered (json.dump(sort_keys=True)) puts its schema last
        data = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    from htmp_cli.results import is_report

    return is_report(data)


def _write_text(path: Path, text: str, flag: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise HtmpError(f"{flag} {path}: cannot write: {err.strerror or err}") from None


def _parse_thresholds(pairs: list[str]):  # type: ignore[no-untyped-def]
    from htmp_cli.fits.phases import PhaseThresholds

    values: dict[str, object] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise HtmpError(f"--threshold {pair!r}: expected NAME=VALUE")
        try:
            values[name.strip()] = float(raw)
        except ValueError:
            raise HtmpError(f"--threshold {pair!r}: {raw!r} is not a number") from None
    return PhaseThresholds.from_mapping(values)


def _emit(report, format: OutputFormat, output: Optional[Path], wide: bool = False,  # type: ignore[no-untyped-def]
          columns: Optional[tuple[str, ...]] = None) -> None:
    from htmp_cli.report import formats

    if format is OutputFormat.table:
        from htmp_cli.report.table import render_table

        if output is None:
            console = _StdoutConsole()
            # Piped or redirected, the table is complete: nobody's terminal width to fit.
            render_table(report, console, complete=wide or not console.is_terminal, columns=columns)
        else:
            with _open_output(output) as handle:
                render_table(report, Console(file=handle, no_color=True), complete=True, columns=columns)
        return
    text = {OutputFormat.json: formats.to_json, OutputFormat.csv: formats.to_csv,
            OutputFormat.md: formats.to_markdown}[format](report)
    if output is None:
        sys.stdout.write(text)
    else:
        with _open_output(output) as handle:
            handle.write(text)


def _open_output(output: Path):  # type: ignore[no-untyped-def]
    try:
        return open(output, "w", encoding="utf-8")
    except OSError as err:
        raise HtmpError(f"--output {output}: cannot write: {err.strerror or err}") from None


@app.command("ls")
def list_tensors(
    path: str = typer.Argument(..., metavar="PATH", help=_PATH_HELP),
    min_dim: int = _MIN_DIM,
    conv: ConvMode = _CONV,
    split_fused: bool = _SPLIT_FUSED,
    skip_embeddings: bool = _SKIP_EMBEDDINGS,
    include: list[str] = _INCLUDE,
    exclude: list[str] = _EXCLUDE,
    format: ListFormat = typer.Option(ListFormat.table, "--format", "-f", help="Output view."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """List tensors, shapes and dtypes, and what would be analysed or skipped (headers only)."""

    def body() -> None:
        from htmp_cli.loaders import open_checkpoint
        from htmp_cli.loaders.matrices import plan_matrices

        options = AnalysisOptions(**_selection(min_dim, conv, split_fused, skip_embeddings, include, exclude))
        checkpoint = open_checkpoint(path)
        matrices, skipped = plan_matrices(checkpoint.tensors, options.matrix_rules)
        verdict = _ls_verdicts(matrices)
        verdict.update({s.name: f"skip: {s.reason}" for s in skipped})
        rows = [(e.name, list(e.shape), e.dtype, verdict[e.name]) for e in checkpoint.tensors]
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
        console = _StdoutConsole()
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

    _run_guarded(debug, body)


def _ls_verdicts(matrices) -> dict[str, str]:  # type: ignore[no-untyped-def]
    by_tensor: dict[str, list] = {}
    for m in matrices:
        by_tensor.setdefault(m.tensor, []).append(m)
    verdicts = {}
    for tensor, specs in by_tensor.items():
        first = specs[0]
        shape = "x".join(map(str, first.shape))
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


# scan, diff, plot and report live in their own modules; importing them registers them on `app`.
from htmp_cli import cli_figures, cli_scan  # noqa: E402,F401


def main() -> None:
    """Entry point: runs the app and turns usage errors into one line on stderr and exit 2."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("htmp: aborted", err=True)
        sys.exit(130)
    except Exception as err:
        # typer vendors click privately; its usage errors are recognised by their interface.
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        if type(err).__name__ == "NoArgsIsHelpError":
            typer.echo(err.format_message(), err=True)
            sys.exit(EXIT_USAGE)
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        # typer validates through pydantic, whose messages start "Value error, "; the option name says it.
        message = " ".join(err.format_message().split()).replace("Value error, ", "").rstrip(".")
        typer.echo(f"htmp: error: {message}{hint}", err=True)
        sys.exit(EXIT_USAGE if err.exit_code in (None, 0, 1, 2) else err.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
