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
    rows = [flat_layer_row(layer) for layer in data["layers"]]
    for label, key in TABLE_COLUMNS:
        # Names and phase reasons fold only past a readable width; numbers never wrap.
        longest = max((len(str(row[key] or "")) for row in rows), default=0)
        min_width = min(longest, 48 if key == "name" else 40) if key in ("name", "phase") else None
        table.add_column(label, justify="right" if key in _NUMERIC else "left", min_width=min_width,
                         overflow="fold", no_wrap=key not in ("name", "warning", "phase"))
    for layer, row in zip(data["layers"], rows):
        cells = [format_number(row[key]) for _, key in TABLE_COLUMNS]
        style = "red" if layer["status"] != "success" else _alpha_style(row["alpha"])
        table.add_row(*cells, style=style or None)
    console.print(table)
    console.print("[bold]Summary[/bold]")
    for line in summary_lines(data):
        console.print(f"  {line}", highlight=False)
    if data["skipped"]:
        # Grouped by reason: a BERT has dozens of biases and norm scales, one line each would bury the rest.
        by_reason: dict[str, list[str]] = {}
        for s in data["skipped"]:
            shape = "x".join(str(d) for d in s["shape"]) or "scalar"
            by_reason.setdefault(s["reason"], []).append(f"{s['name']} ({shape} {s['dtype']})")
        skipped = Table(title=f"Skipped tensors ({len(data['skipped'])})", title_justify="left",
                        header_style="bold")
        skipped.add_column("reason", overflow="fold", ratio=1)
        skipped.add_column("count", justify="right", no_wrap=True)
        skipped.add_column("tensors", overflow="fold", ratio=3, style="dim")
        for reason, names in by_reason.items():
            skipped.add_row(reason, str(len(names)), ", ".join(names))
        console.print(skipped)
