"""The terminal view: a rich table of layers, the model summary, and the skipped tensors."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from htmp_cli.pipeline import AnalysisReport
from htmp_cli.report.formats import TABLE_COLUMNS, flat_layer_row, format_number, report_to_dict, summary_lines

_NUMERIC = {"alpha", "D", "tail_size", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank"}


def _alpha_style(alpha: float | None) -> str:
    if alpha is None:
        return "dim"
    if alpha < 2:
        return "bold red"
    if alpha > 6:
        return "yellow"
    return ""


def render_table(report: AnalysisReport, console: Console) -> None:
    data = report_to_dict(report)
    table = Table(title=f"htmp: {data['source']['path']}", title_justify="left", header_style="bold")
    for label, key in TABLE_COLUMNS:
        table.add_column(label, justify="right" if key in _NUMERIC else "left",
                         overflow="fold", no_wrap=key in ("shape",))
    for layer in data["layers"]:
        row = flat_layer_row(layer)
        cells = [format_number(row[key]) for _, key in TABLE_COLUMNS]
        style = "red" if layer["status"] != "success" else _alpha_style(row["alpha"])
        table.add_row(*cells, style=style or None)
    console.print(table)
    console.print("[bold]Summary[/bold]")
    for line in summary_lines(data):
        console.print(f"  {line}", highlight=False)
    if data["skipped"]:
        skipped = Table(title="Skipped tensors", title_justify="left", header_style="bold")
        for column in ("tensor", "shape", "dtype", "reason"):
            skipped.add_column(column, overflow="fold")
        for s in data["skipped"]:
            skipped.add_row(s["name"], "x".join(str(d) for d in s["shape"]) or "scalar", s["dtype"], s["reason"])
        console.print(skipped)
