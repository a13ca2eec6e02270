"""The terminal view of a scan: one row per checkpoint, the failures, and the label correlations."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from htmp_cli.report.formats import format_number
from htmp_cli.scan.labels import Correlation
from htmp_cli.scan.runner import ScanResult, ScanRow

PHASE_ABBREVIATIONS = {"random-like": "RL", "bleeding-out": "BO", "bulk+spikes": "BS", "bulk-decay": "BD",
                       "heavy-tailed": "HT", "rank-collapse": "RC", "unclassified": "UC"}
_MEANS = (("alpha", "alpha"), ("alpha_w", "alpha_weighted"), ("log_norm", "log_norm"),
          ("stable_rank", "stable_rank"), ("kappa", "kappa"))


def display_path(path: Path, root: Path | None = None) -> str:
    """A path as the user would write it: relative to the current folder when below it, else to `root`."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    if not relative.startswith("..") or root is None:
        return relative
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return str(path)


def common_root(paths: list[Path]) -> Path | None:
    """The deepest folder holding every path (None for a single one or none)."""
    if len(paths) < 2:
        return paths[0].resolve().parent if paths else None
    try:
        return Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    except ValueError:
        return None


def failure_parts(row: ScanRow, root: Path | None = None) -> tuple[str, str]:
    """(where, what) of a failed checkpoint, the path said once.

    A loader's error begins with the path it read ("<path>: <what is wrong>"): the checkpoint, one of
    its files, or as stored, the path of an identical copy analysed in its place. That path, shown
    like the checkpoint column, becomes `where`; other errors ("out of memory") stay whole after the
    checkpoint's name.
    """
    error = row.result.error or ""
    unit = row.unit
    candidates = {unit.path: unit.path, Path(row.result.path): unit.path}
    for f in unit.files:
        candidates[f] = f
    for given, shown in list(candidates.items()):
        candidates.setdefault(given.resolve(), shown)
    for given, shown in sorted(candidates.items(), key=lambda item: -len(str(item[0]))):  # the longest path first
        prefix = f"{given}: "
        if error.startswith(prefix):
            return display_path(shown, root), error[len(prefix):]
    return display_path(unit.path, root), error


def render_scan(result: ScanResult, console: Console, labels: dict[int, dict[str, float | None]],
                label_columns: tuple[str, ...]) -> None:
    root = common_root([row.unit.path for row in result.rows])
    where = f" under {root}" if root is not None and os.path.relpath(root).startswith("..") else ""
    table = Table(title=f"htmp scan: {len(result.rows)} checkpoints{where}", title_justify="left", header_style="bold")
    table.add_column("checkpoint", overflow="fold")
    table.add_column("status")
    table.add_column("layers", justify="right")
    for label, _ in _MEANS:
        table.add_column(f"mean {label}", justify="right")
    table.add_column("phases")
    for column in label_columns:
        table.add_column(column, justify="right", style="cyan")
    table.add_column("time", justify="right")
    for index, row in enumerate(result.rows):
        summary = row.result.report.summary if row.result.report is not None else None
        means = summary.means if summary is not None else {}
        phases = " ".join(f"{PHASE_ABBREVIATIONS.get(name, name)} {count}"  # a phase newer than this table: its name
                          for name, count in (summary.phase_counts if summary is not None else {}).items() if count)
        failed_layers = summary.n_failed_layers if summary is not None else 0
        status = row.result.status if row.result.status == "failed" else ("ok" if not failed_layers else f"ok, {failed_layers} failed layers")
        table.add_row(
            display_path(row.unit.path, root),
            status,
            str(row.result.n_layers) if row.result.status == "success" else "-",
            *[format_number(means.get(key)) for _, key in _MEANS],
            phases or "-",
            *[format_number((labels.get(index) or {}).get(column)) for column in label_columns],
            f"{row.result.seconds:.2f} s" + ("" if row.analysed_now else " (another scan)" if row.by_another_scan else " (stored)"),
            style="red" if row.result.status == "failed" else None,
        )
    console.print(table)
    console.print("phases: " + ", ".join(f"{abbr} {name}" for name, abbr in PHASE_ABBREVIATIONS.items()), style="dim", highlight=False)
    meanwhile = f", {result.n_by_another_scan} analysed by another scan of the same store" if result.n_by_another_scan else ""
    console.print(f"{result.n_analysed} analysed now with {result.executor}, {result.n_reused} taken from the store{meanwhile}; "
                  f"{len(result.failed)} failed; {result.seconds:.2f} s", highlight=False)
    if result.failed:
        console.print(f"[bold red]{len(result.failed)} checkpoint{'s' if len(result.failed) > 1 else ''} failed:[/]")
        for row in result.failed:
            where, what = failure_parts(row, root)
            console.print(f"  {where}: {what}", highlight=False, markup=False)


def render_correlations(found: list[Correlation], console: Console, unmatched: list[str], n_labelled: int) -> None:
    if unmatched:
        console.print(f"labels: {len(unmatched)} rows match no scanned checkpoint: {', '.join(unmatched[:8])}"
                      + (" ..." if len(unmatched) > 8 else ""), style="yellow", highlight=False, markup=False)
    if not found:
        console.print(f"labels: no correlations ({n_labelled} labelled checkpoints with results; at least 3 are needed)")
        return
    table = Table(title="rank correlation of each summary metric with each label, strongest first",
                  title_justify="left", header_style="bold")
    for column in ("label", "metric (mean over layers)", "n", "Spearman rho", "p", "Kendall tau", "p"):
        table.add_column(column, justify="left" if column in ("label", "metric (mean over layers)") else "right")
    for c in found:
        table.add_row(c.label, c.metric, str(c.n), _signed(c.spearman_rho), _p(c.spearman_p),
                      _signed(c.kendall_tau), _p(c.kendall_p))
    console.print(table)


def _signed(value: float) -> str:
    return "-" if value != value else f"{value:+.3f}"


def _p(value: float) -> str:
    return "-" if value != value else (f"{value:.1e}" if value < 1e-3 else f"{value:.3f}")
