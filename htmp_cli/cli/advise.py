"""htmp advise: per-layer settings from the spectra (htmp_cli.advise)."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from htmp_cli.cli.common import app, open_output, read_report_file, run_guarded, stdout_console, write_text
from htmp_cli.cli.flags import DEBUG, JOBS, PATH_HELP, PROGRESS, with_analysis_flags
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.outputs import check_writable


class Method(str, Enum):
    pruning = "pruning"
    lr = "lr"
    weight_decay = "weight-decay"
    lora_rank = "lora-rank"
    bits = "bits"


class Estimator(str, Enum):
    csn = "csn"
    median = "median"
    peak = "peak"
    farms = "farms"


class Grouping(str, Enum):
    layer = "layer"
    block = "block"


class AdviceFormat(str, Enum):
    table = "table"
    json = "json"
    mapping = "mapping"


@app.command()
@with_analysis_flags
def advise(
    analysis: AnalysisOptions,
    path: str = typer.Argument(..., metavar="PATH", help=PATH_HELP + " Or a saved report (--estimator csn or farms)."),
    method: Method = typer.Option(..., "--for", help="What to set per layer: pruning (AlphaPruning), lr (TempBalance), "
                                                     "weight-decay (AlphaDecay), lora-rank (AlphaLoRA), bits (AlphaQ)."),
    estimator: Optional[Estimator] = typer.Option(None, "--estimator",
                                                  help="The alpha the rule reads (default: the paper's): csn = htmp's "
                                                       "fit, median = xmin at the median eigenvalue (TempBalance, "
                                                       "AlphaDecay), peak = xmin near the log-ESD peak (AlphaPruning, "
                                                       "AlphaLoRA), farms = FARMS windows (AlphaQ)."),
    grouping: Optional[Grouping] = typer.Option(None, "--grouping",
                                                help="block: alphas averaged over each transformer block (the "
                                                     "default of pruning and lora-rank); layer: each layer its own."),
    sparsity: Optional[float] = typer.Option(None, "--sparsity", help="pruning: the global sparsity (default 0.7)."),
    epsilon: Optional[float] = typer.Option(None, "--epsilon",
                                            help="pruning: the band, sparsity ratios 1 - eps to 1 + eps (default 0.3)."),
    max_sparsity: Optional[float] = typer.Option(None, "--max-sparsity",
                                                 help="pruning: no layer pruned beyond it (default 1.0)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="lr: the base learning rate (default: show the factors)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay",
                                                 help="weight-decay: the base weight decay (default: show the factors)."),
    min_ratio: Optional[float] = typer.Option(None, "--min-ratio",
                                              help="lr, weight-decay: the factor of the heaviest tail (0.5; 0.6666)."),
    max_ratio: Optional[float] = typer.Option(None, "--max-ratio",
                                              help="lr, weight-decay: the factor of the lightest tail (1.5; 3)."),
    total_rank: Optional[int] = typer.Option(None, "--total-rank",
                                             help="lora-rank: the ranks' total over the units (default 8 per unit)."),
    power: Optional[float] = typer.Option(None, "--power", help="lora-rank: the exponent b of alpha^b (default 2.5)."),
    min_rank: Optional[int] = typer.Option(None, "--min-rank", help="lora-rank: the smallest rank (default 1)."),
    average_bits: Optional[float] = typer.Option(None, "--average-bits",
                                                 help="bits: the parameter-weighted mean width (default 3.5)."),
    bit_widths: Optional[str] = typer.Option(None, "--bit-widths", metavar="B,...",
                                             help="bits: the widths allowed (default 1,2,3,4)."),
    gamma: Optional[float] = typer.Option(None, "--gamma", help="bits: the exponent of the sensitivity (default 1)."),
    format: AdviceFormat = typer.Option(AdviceFormat.table, "--format", "-f",
                                        help="table; json (htmp.advice/1, every layer with its reason); mapping "
                                             "({module: value}: AlphaPruning's ratios, a peft rank_pattern, a bits map)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the output to FILE instead of stdout."),
    jobs: Optional[int] = JOBS,
    progress: Optional[bool] = PROGRESS,
    debug: bool = DEBUG,
) -> None:
    """Per-layer settings from the spectra: sparsity, learning rate, weight decay, LoRA rank or bit width."""

    def body() -> None:
        nonlocal analysis
        from htmp_cli.advise import FARMS_SUB_BLOCK
        from htmp_cli.advise.plan import SPECS, advise_report
        from htmp_cli.results import is_report_file

        if output is not None:
            check_writable(output, "--output")
        widths = _widths(bit_widths) if bit_widths is not None else None
        given = dict(sparsity=sparsity, epsilon=epsilon, max_sparsity=max_sparsity, lr=lr, weight_decay=weight_decay,
                     min_ratio=min_ratio, max_ratio=max_ratio, total_rank=total_rank, power=power, min_rank=min_rank,
                     average_bits=average_bits, bit_widths=widths, gamma=gamma)
        chosen = estimator.value if estimator is not None else SPECS[method.value].estimator
        _refuse_idle_flags(analysis, chosen)
        analysis = replace(analysis, htmp=False)  # no rule reads HTMP's fit
        if is_report_file(path):
            if analysis != replace(AnalysisOptions(), htmp=False):
                raise HtmpError(f"{path} is a saved report: analysis options apply only to checkpoints")
            report = read_report_file(Path(path), "report")
        else:
            if chosen == "farms" and not analysis.farms:  # AlphaQ's sub-blocks, unless a window is given
                analysis = replace(analysis, farms=True, farms_window=analysis.farms_window or FARMS_SUB_BLOCK)
            report = _analysed(path, analysis, jobs, progress)
        result = advise_report(report, method.value, estimator=chosen,
                               grouping=grouping.value if grouping is not None else None, settings=given)
        _emit(result, format, output)

    run_guarded(debug, body)


def _refuse_idle_flags(analysis: AnalysisOptions, estimator: str) -> None:
    """The analysis flags that could not change the advice are errors, not silently ignored."""
    default = AnalysisOptions()
    idle = [flag for flag, field in (("--vectors", "vectors"), ("--randomize", "randomize"),
                                     ("--bootstrap", "bootstrap"), ("--alternatives", "alternatives"),
                                     ("--seed", "seed"), ("--threshold", "thresholds"))
            if getattr(analysis, field) != getattr(default, field)]
    if estimator != "csn":
        idle += [flag for flag, field in (("--fit", "fit"), ("--min-tail", "min_tail"))
                 if getattr(analysis, field) != getattr(default, field)]
    if estimator != "farms":
        idle += [flag for flag, field in (("--farms", "farms"), ("--farms-window", "farms_window"),
                                          ("--farms-grid", "farms_grid"))
                 if getattr(analysis, field) != getattr(default, field)]
    if idle:
        raise HtmpError(f"{', '.join(idle)}: no effect on the advice with --estimator {estimator}")


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise HtmpError(f"--bit-widths {text!r}: expected whole numbers separated by commas, like 2,3,4") from None


def _analysed(path: str, options: AnalysisOptions, jobs: Optional[int], progress: Optional[bool]):  # type: ignore[no-untyped-def]
    from htmp_cli.pipeline import analyze as run_analysis

    err_console = Console(stderr=True)
    show = err_console.is_terminal if progress is None else progress
    with ExitStack() as stack:
        listener = None
        if show:
            from htmp_cli.progress import LayerProgress

            listener = stack.enter_context(LayerProgress(err_console))
        return run_analysis(path, options, listener, keep_eigenvalues=True, jobs=jobs)


def _emit(result, format: AdviceFormat, output: Optional[Path]) -> None:  # type: ignore[no-untyped-def]
    from htmp_cli.advise.output import mapping_json, render_table

    if format is AdviceFormat.table:
        if output is None:
            render_table(result, stdout_console(160))
        else:
            with open_output(output) as handle:
                render_table(result, Console(file=handle, no_color=True, width=160))
        return
    text = result.to_json() if format is AdviceFormat.json else mapping_json(result)
    if output is None:
        typer.echo(text)
    else:
        write_text(output, text + "\n", "--output")
