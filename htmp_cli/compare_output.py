"""Views of a ReportDiff: a terminal table, CSV and Markdown (JSON is `diff_to_dict`)."""

from __future__ import annotations

import csv
import io

from rich.console import Console
from rich.table import Table

from htmp_cli.compare import ReportDiff, flat_rows

DEFAULT_METRICS = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank", "kappa")


def _delta(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.3g}" if value != 0 else "0"


def _phase_cell(before: str | None, after: str | None) -> str:
    if before == after:
        return before or "-"
    return f"{before or '-'} -> {after or '-'}"


def render_diff(diff: ReportDiff, console: Console, metrics: tuple[str, ...], changed_only: bool) -> None:
    table = Table(title=f"htmp diff: {diff.before} -> {diff.after}", title_justify="left", header_style="bold",
                  caption="change = after - before; rows in bold yellow changed phase", caption_justify="left")
    table.add_column("layer", overflow="fold")
    table.add_column("phase")
    for metric in metrics:
        table.add_column(f"d {metric}", justify="right")
    with_ks = any(layer.ks_esd is not None for layer in diff.layers)
    if with_ks:
        table.add_column("KS ESD", justify="right")
    shown = diff.phase_changes if changed_only else diff.layers
    for layer in shown:
        table.add_row(layer.name, _phase_cell(layer.phase_before, layer.phase_after),
                      *[_delta(layer.metrics[m].delta) for m in metrics],
                      *([_ks(layer.ks_esd)] if with_ks else []),
                      style="bold yellow" if layer.phase_changed else None)
    console.print(table)
    console.print(f"{len(diff.layers)} layers in both, {len(diff.phase_changes)} changed phase", highlight=False)
    for line in pairing_lines(diff):
        console.print(line, highlight=False, markup=False)
    reasons = dict(diff.unpaired)
    for label, names in (("only in before", diff.only_before), ("only in after", diff.only_after)):
        if names:
            shown_names = [f"{name} ({reasons[name]})" if name in reasons else name for name in names]
            console.print(f"{label} ({len(names)}): {', '.join(shown_names)}", style="yellow", highlight=False,
                          markup=False)
    means = [f"{name} {_delta(c.delta)}" for name, c in sorted(diff.summary.items()) if c.delta is not None]
    if means:
        console.print("change of the summary means: " + ", ".join(means), highlight=False)


def _ks(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def pairing_lines(diff: ReportDiff) -> list[str]:
    """How the layers were paired, and how alike the two models' alphas rank."""
    lines = [f"paired: {diff.pairing}"] if diff.pairing else []
    if diff.alpha_rank_correlation is not None:
        lines.append(f"rank correlation of the paired layers' alphas (Spearman): {diff.alpha_rank_correlation:.3f}")
    return lines


def diff_csv(diff: ReportDiff) -> str:
    rows = flat_rows(diff)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["name"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def diff_markdown(diff: ReportDiff, metrics: tuple[str, ...], changed_only: bool) -> str:
    lines = [f"# htmp diff: `{diff.before}` -> `{diff.after}`", "",
             "| layer | phase | " + " | ".join(f"d {m}" for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for layer in diff.phase_changes if changed_only else diff.layers:
        phase = _phase_cell(layer.phase_before, layer.phase_after)
        phase = f"**{phase}**" if layer.phase_changed else phase
        lines.append(f"| {layer.name} | {phase} | " + " | ".join(_delta(layer.metrics[m].delta) for m in metrics) + " |")
    lines += ["", f"{len(diff.layers)} layers in both, {len(diff.phase_changes)} changed phase."]
    lines += [f"{line}." for line in pairing_lines(diff)]
    reasons = dict(diff.unpaired)
    for label, names in (("Only in before", diff.only_before), ("Only in after", diff.only_after)):
        if names:
            lines.append(f"{label}: {', '.join(f'{n} ({reasons[n]})' if n in reasons else n for n in names)}.")
    return "\n".join(lines) + "\n"
