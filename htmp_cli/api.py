"""htmp from Python: `analyze`, `check` and `diff`, the objects the commands print.

The keyword options of `analyze` are the command line's analysis flags in snake_case
(`min_dim=8`, `skip_embeddings=True`, `thresholds={"alpha_heavy": 3.5}`), with the same defaults and
checks as the flags and `htmp.toml`'s [analysis] table (`AnalysisOptions.from_mapping`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from htmp_cli.errors import HtmpError, OptionError
from htmp_cli.options import AnalysisOptions
from htmp_cli.results import Report, is_report_file

if TYPE_CHECKING:
    from htmp_cli.adapter import AdapterAnalysis
    from htmp_cli.compare import ReportDiff
    from htmp_cli.gate import Verdict

Source = Any  # a path, a torch.nn.Module, a mapping of names to tensors or arrays, or one 2-D array


def analyze(source: Source, *, jobs: int | None = None, progress: bool = False, **options: Any) -> Report:
    """Analyse every weight matrix of `source` and return the Report.

    `source` is anything `htmp analyze` takes (a checkpoint file, a shard index, a folder) or weights
    in memory: a torch module, a state dict (torch tensors or numpy arrays), or one 2-D array.
    In-memory weights are never written to disk. `jobs` is `--jobs` (weights in memory are solved
    in this process, their fits in a second one where that pays); `progress` draws a bar on stderr.
    Each layer keeps its eigenvalues, so `report.plot(name)` can draw them.
    """
    from htmp_cli.pipeline import analyze as run_analysis

    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise OptionError(f"jobs must be a whole number of at least 1 (or None), got {jobs!r}")
    analysis = AnalysisOptions.from_mapping(options)
    checkpoint = _opened(source)
    if not progress:
        return run_analysis(checkpoint, analysis, keep_eigenvalues=True, jobs=jobs)
    from rich.console import Console

    from htmp_cli.progress import LayerProgress

    with LayerProgress(Console(stderr=True)) as listener:
        return run_analysis(checkpoint, analysis, listener, keep_eigenvalues=True, jobs=jobs)


def analyze_adapter(adapter: str | os.PathLike[str], base: str | os.PathLike[str], *, jobs: int | None = None,
                    progress: bool = False, **options: Any) -> AdapterAnalysis:
    """`htmp analyze ADAPTER --base BASE`: a LoRA adapter's updates, and the weights they change in
    `base` before and after merging (an `adapter.AdapterAnalysis`: `.update`, `.base`, `.merged`
    Reports, `.diff` the per-module change, `.unpaired` the updates with no weight in the base)."""
    from htmp_cli.adapter import analyze_adapter as run

    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise OptionError(f"jobs must be a whole number of at least 1 (or None), got {jobs!r}")
    analysis = AnalysisOptions.from_mapping(options)
    if not progress:
        return run(adapter, base, analysis, jobs=jobs)
    from rich.console import Console

    from htmp_cli.progress import LayerProgress

    with LayerProgress(Console(stderr=True)) as listener:
        return run(adapter, base, analysis, listener, jobs=jobs)


def check(report_or_source: Report | Source, config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
          baseline: Report | str | os.PathLike[str] | None = None, **options: Any) -> Verdict:
    """The `htmp check` verdict (a `gate.Verdict`: `.passed`, `.errors`, `.warnings`, `.violations`).

    `config` is an htmp.toml path or its parsed tables; None applies the built-in rules. A source
    that is not a Report is analysed first, with the config's [analysis] options and then `options`
    (the baseline too); options beside a Report are an error (it was analysed already).
    `baseline` (a Report, a saved report or a source) adds the drift rules.
    """
    from htmp_cli import gate

    if config is None:
        settings: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        settings = dict(config)
    else:
        settings = gate.load_config(Path(config))
    gate_config = gate.parse_config(settings, str(config) if isinstance(config, (str, os.PathLike)) else "config")
    analysis = {**gate_config.analysis, **options}
    report = _report(report_or_source, analysis, options)
    # The configuration's selection applies to a report made already, as `htmp check report.json` does.
    selected = gate.select_layers(report, AnalysisOptions.from_mapping(analysis))
    verdict = gate.evaluate(selected, gate_config.rules)
    if baseline is not None:
        rules = gate_config.drift_rules if gate_config.drift_rules is not None else gate.DEFAULT_DRIFT_RULES
        verdict = gate.combine(verdict, gate.evaluate_drift(selected, _report(baseline, analysis, options), rules))
    return verdict


def diff(before: Report | Source, after: Report | Source, **options: Any) -> ReportDiff:
    """The `htmp diff` of two reports, saved reports or sources (sources analysed with `options`)."""
    from htmp_cli.compare import diff_reports

    return diff_reports(_report(before, options, options), _report(after, options, options))


def _opened(source: Source) -> Any:
    from htmp_cli.loaders.memory import is_in_memory_source, open_in_memory

    if isinstance(source, (str, os.PathLike)):
        from htmp_cli.loaders import open_checkpoint

        return open_checkpoint(source)
    if is_in_memory_source(source):
        return open_in_memory(source)
    raise HtmpError(f"cannot analyse a {type(source).__name__}: expected a path, a torch module, "
                    "a mapping of names to tensors or arrays, or one 2-D array")


def _report(value: Report | Source, analysis: dict[str, Any], given: dict[str, Any]) -> Report:
    """A Report as it is, a saved report read back, anything else analysed with `analysis`; options
    `given` by the caller cannot change a report made already, so they are refused beside one."""
    saved = isinstance(value, (str, os.PathLike)) and is_report_file(value)
    if (isinstance(value, Report) or saved) and given:
        raise OptionError(f"{', '.join(sorted(given))}: analysis options apply to sources, not to a report "
                          "analysed already")
    if isinstance(value, Report):
        return value
    if saved:
        return Report.from_json(Path(value))
    return analyze(value, **analysis)
