"""The terminal view: a table of layers laid out for the width it lands in, the model summary, and
the skipped tensors.

On a terminal the table keeps, for every row, the layer name (its leading parts abbreviated, or
its middle left out, if it must be), its shape, alpha, kappa, the phase and a warning marker;
other columns join in order of importance while they fit, and the table names the ones left out.
No cell is ever cut: a number is shown whole or its column is left out. Written to a file or a
pipe, the table is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from htmp_cli.loaders.matrices import SkippedTensor
from htmp_cli.results import LayerResult, Report
from htmp_cli.report.formats import (finite, flat_layer_row, format_number, kappa_text, skipped_shape, summary_lines,
                                     randomized_text, tail_test_text, vectors_text)

ELLIPSIS = "…"
MIN_NAME_WIDTH = 16  # a shortened name still shows its block number and its last parts
_PADDING = 2  # spaces between two columns


@dataclass(frozen=True)
class Column:
    key: str  # the --columns name
    label: str
    numeric: bool


# In order of importance: the first six are on every row; the others join while they fit.
COLUMNS = (
    Column("name", "name", False),
    Column("shape", "shape", False),
    Column("alpha", "alpha", True),
    Column("kappa", "kappa", False),
    Column("phase", "phase", False),
    Column("warn", "!", False),
    Column("localised", "localised", False),
    Column("shuffled", "shuffled", False),
    Column("tail_test", "tail_test", False),
    Column("farms_alpha", "farms_alpha", True),
    Column("farms_kappa", "farms_kappa", True),
    Column("warning", "warning", False),
    Column("D", "D", True),
    Column("tail", "tail", True),
    Column("reason", "reason", False),
    Column("alpha_weighted", "alpha_weighted", True),
    Column("log_norm", "log_norm", True),
    Column("log_spectral_norm", "log_spectral_norm", True),
    Column("stable_rank", "stable_rank", True),
    Column("kind", "kind", False),
    Column("dtype", "dtype", False),
)
COLUMN_NAMES = tuple(c.key for c in COLUMNS)
REQUIRED = ("name", "shape", "alpha", "kappa", "phase", "warn")
# Columns of evidence computed only when asked (--vectors, --randomize, --bootstrap, --alternatives, --farms): shown first after the required ones
# when a layer has them, and not at all otherwise.
ASKED_FOR = ("localised", "shuffled", "tail_test", "farms_alpha", "farms_kappa")
_BY_KEY = {c.key: c for c in COLUMNS}


def parse_columns(text: str) -> tuple[str, ...]:
    """`--columns name,alpha,phase` -> the column keys, in the order given; unknown names are an error."""
    from htmp_cli.errors import OptionError

    keys = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [k for k in keys if k not in _BY_KEY]
    if unknown:
        raise OptionError(f"--columns {text!r}: unknown column {unknown[0]!r} (columns: {', '.join(COLUMN_NAMES)})")
    if not keys:
        raise OptionError(f"--columns {text!r}: no column named (columns: {', '.join(COLUMN_NAMES)})")
    return keys


def shorten_name(name: str, width: int) -> str:
    """A layer name in at most `width` characters that still tells layers apart: a trailing
    ".weight" goes first (every matrix has it), then the dotted parts from the left are cut down
    (numbers kept: they say which block), and only if that is not enough does the middle give way
    to an ellipsis."""
    if len(name) <= width:
        return name
    parts = name.removesuffix(".weight").split(".")
    for k in range(len(parts) - 1):
        excess = len(".".join(parts)) - width
        if excess <= 0:
            break
        if not parts[k].isdigit():
            parts[k] = parts[k][:max(1, len(parts[k]) - excess)]
    return shorten_middle(".".join(parts), width)


def shortened_names(names: Sequence[str], width: int) -> list[str]:
    """`shorten_name` of each, except that names which would look alike keep their ends instead."""
    short = [shorten_name(n, width) for n in names]
    seen: dict[str, int] = {}
    for s in short:
        seen[s] = seen.get(s, 0) + 1
    return [shorten_middle(n, width) if seen[s] > 1 else s for n, s in zip(names, short)]


def shorten_middle(text: str, width: int) -> str:
    """`text` in at most `width` characters, its middle replaced by an ellipsis if it must be."""
    if len(text) <= width:
        return text
    if width < 3:
        return text[:width]
    keep = width - 1
    head = (keep + 1) // 2
    return text[:head] + ELLIPSIS + text[len(text) - (keep - head):]


def _phase_parts(summary: str | None) -> tuple[str, str]:
    """A phase summary "heavy-tailed: alpha 2.58, ..." split into its label and its reason."""
    if not summary:
        return "-", "-"
    label, _, reason = summary.partition(": ")
    return label, reason or "-"


def _cells(layer: LayerResult) -> dict[str, str]:
    row = flat_layer_row(layer)
    phase, reason = _phase_parts(row["phase"])
    warning = row["warning"] or ""
    marker = "x" if layer.status != "success" or row["fit_status"] == "failed" else ("!" if warning else "")
    cells = {
        "name": row["name"], "shape": row["shape"], "phase": phase, "reason": reason, "warn": marker,
        "warning": warning or "-", "tail": format_number(row["tail_size"]), "kind": row["kind"], "dtype": row["dtype"],
    }
    for key in ("alpha", "D", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank"):
        cells[key] = format_number(row[key])
    cells["kappa"] = kappa_text(row)
    cells["localised"] = vectors_text(row)
    cells["shuffled"] = randomized_text(row)
    cells["tail_test"] = tail_test_text(row)
    cells["farms_alpha"] = format_number(row["farms_alpha"])
    cells["farms_kappa"] = format_number(row["farms_kappa"])
    return cells


def _width(key: str, cells: Sequence[dict[str, str]]) -> int:
    return max([len(_BY_KEY[key].label), *(len(c[key]) for c in cells)])


@dataclass(frozen=True)
class Layout:
    """Which columns are shown, how wide each is, and what was left out."""

    columns: tuple[str, ...]
    name_width: int
    left_out: tuple[str, ...]
    widths: dict[str, int]  # every column's widest cell (header included)

    @property
    def total(self) -> int:
        return (sum(self.name_width if k == "name" else self.widths[k] for k in self.columns)
                + _PADDING * (len(self.columns) - 1))


def plan_layout(cells: Sequence[dict[str, str]], width: int | None, chosen: Sequence[str] | None = None) -> Layout:
    """The columns for a table `width` characters wide (None: unbounded, every column).

    `chosen` (from --columns) fixes the columns; otherwise the required ones come first, the name
    gets its full width if it fits, and the others join in order while they fit. The marker column
    gives way to the warning column when that fits, since it says the same in words. A column of
    evidence no layer has (ASKED_FOR) is not a candidate."""
    widths = {c.key: _width(c.key, cells) for c in COLUMNS}
    absent = {key for key in ASKED_FOR if all(c[key] == "-" for c in cells)}
    candidates = [k for k in COLUMN_NAMES if k not in absent]
    full_name, least_name = widths["name"], min(MIN_NAME_WIDTH, widths["name"])
    if chosen is not None:
        name_width = full_name
        if width is not None and "name" in chosen:
            rest = Layout(tuple(k for k in chosen if k != "name"), 0, (), widths).total + _PADDING
            name_width = max(min(full_name, width - rest), least_name)
        return Layout(tuple(chosen), name_width, (), widths)
    if width is None:
        return Layout(tuple(k for k in candidates if k != "warn"), full_name, (), widths)
    columns = list(REQUIRED)
    name_width = max(min(full_name, width - Layout(REQUIRED, 0, (), widths).total), least_name)
    left_out = []
    for key in candidates[len(REQUIRED):]:
        trial = columns + [key]
        if key == "warning":
            trial.remove("warn")
        if Layout(tuple(trial), name_width, (), widths).total <= width:
            columns = trial
        else:
            left_out.append(key)
    return Layout(tuple(columns), name_width, tuple(left_out), widths)


def _alpha_style(alpha: float | None) -> str:
    if alpha is None:
        return "dim"
    if alpha < 2:
        return "bold red"
    if alpha > 6:
        return "yellow"
    return ""


def layer_table(report: Report, cells: Sequence[dict[str, str]], layout: Layout) -> Table:
    """The layer table of a report, its cells (one per layer, from `_cells`) laid out as `layout` says."""
    table = Table(title=f"htmp: {report.source.path}", title_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), pad_edge=False, show_edge=False)
    for key in layout.columns:
        column = _BY_KEY[key]
        # Every column exactly as wide as its widest cell: nothing for rich to cut or fold.
        table.add_column(column.label, justify="right" if column.numeric else "left",
                         width=layout.name_width if key == "name" else layout.widths[key], no_wrap=True)
    names = shortened_names([row["name"] for row in cells], layout.name_width)
    for layer, row, name in zip(report.layers, cells, names):
        style = "red" if layer.status != "success" else _alpha_style(finite(layer.alpha))
        table.add_row(*[name if key == "name" else row[key] for key in layout.columns], style=style or None)
    return table


def render_table(report: Report, console: Console, *, complete: bool = False,
                 columns: Sequence[str] | None = None) -> None:
    """Print the layer table, the summary and the skipped tensors.

    complete: every column, however wide (files, pipes and --wide); otherwise the console's width
    decides which columns fit. columns: exactly these columns (--columns)."""
    cells = [_cells(layer) for layer in report.layers]
    layout = plan_layout(cells, None if complete else console.width, columns)
    if complete or columns is not None or layout.total > console.width:
        # The table is as wide as it needs (below about 55 columns even the required ones overflow):
        # longer lines rather than cut numbers.
        console.width = max(console.width, layout.total + 1)
    console.print(layer_table(report, cells, layout))
    if layout.left_out:
        console.print(f"(columns left out to fit {console.width}: {', '.join(layout.left_out)}; "
                      "--wide shows every column, --columns NAME,... chooses them)", highlight=False, style="dim")
    if "warn" in layout.columns and any(row["warn"] for row in cells):
        console.print("(! a warning, x a failure: the warning column says which)", highlight=False, style="dim")
    console.print("[bold]Summary[/bold]")
    for line in summary_lines(report):
        console.print(f"  {line}", highlight=False)
    if report.skipped:
        _print_skipped(report.skipped, console)


def _print_skipped(skipped_tensors: Sequence[SkippedTensor], console: Console) -> None:
    # Grouped by reason: a BERT has dozens of biases and norm scales, one line each would bury the rest.
    by_reason: dict[str, list[str]] = {}
    for s in skipped_tensors:
        by_reason.setdefault(s.reason, []).append(f"{s.name} ({skipped_shape(s)} {s.dtype})")
    console.print(f"[bold]Skipped tensors ({len(skipped_tensors)})[/bold]")
    for reason, names in by_reason.items():
        # Word-wrapped lines, never a name cut in two: `grep` on the output finds every tensor.
        console.print(Text(f"  {reason} ({len(names)}): ", style="bold") + Text(", ".join(names), style="dim"))
