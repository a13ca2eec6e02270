"""How an Advice is shown: a table with its budget line, the JSON document, the {module: value} mapping."""

from __future__ import annotations

import json
from collections import Counter

from rich.console import Console
from rich.table import Table

from htmp_cli.advise.plan import SPECS, Advice

_VALUE_FORMATS = {"pruning": "{:.4f}", "lr": "{:.6g}", "weight-decay": "{:.6g}", "lora-rank": "{:d}", "bits": "{:d}"}


def budget_line(advice: Advice) -> str:
    """What the settings hold, in one line: the budget asked and the one spent."""
    s = advice.settings
    if advice.achieved is None and advice.method not in ("lr", "weight-decay"):
        return "no layer set: every analysed layer is left out"
    if advice.method == "pruning":
        return (f"global sparsity {s['sparsity']:g} (epsilon {s['epsilon']:g}): parameter-weighted mean "
                f"{advice.achieved:.6f} over the layers pruned")
    if advice.method in ("lr", "weight-decay"):
        base_name = "lr" if advice.method == "lr" else "weight_decay"
        base = s[base_name]
        factors = [layer.factor for layer in advice.layers if layer.status == "fitted" and layer.factor is not None]
        spread = f"factors {min(factors):.4g} to {max(factors):.4g}" if factors else "no layer fitted: every factor 1"
        scale = f"base {base:g}" if base is not None else "values are factors of the base"
        return f"{scale}; {spread} (bounds {s['min_ratio']:g}, {s['max_ratio']:g})"
    if advice.method == "lora-rank":
        return f"total rank {s['total_rank']} (power {s['power']:g}, at least {s['min_rank']}): spent {advice.achieved:.0f}"
    widths = ",".join(str(w) for w in s["bit_widths"])
    return (f"average {s['average_bits']:g} bits over widths {widths} (gamma {s['gamma']:g}): "
            f"parameter-weighted mean {advice.achieved:.4f}")


def render_table(advice: Advice, console: Console) -> None:
    spec = SPECS[advice.method]
    value_format = _VALUE_FORMATS[advice.method]
    base = {"lr": "lr", "weight-decay": "weight_decay"}.get(advice.method)
    header = f"{spec.value} factor" if base is not None and advice.settings[base] is None else spec.value
    table = Table(title=f"{advice.paper}: {spec.value} per layer", title_justify="left", box=None, pad_edge=False)
    for name, justify in (("layer", "left"), ("unit", "left"), ("params", "right"), ("alpha", "right"),
                          (header, "right"), ("status", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for layer in advice.layers:
        value = value_format.format(int(layer.value) if "d" in value_format else layer.value)
        unit = "" if layer.unit == layer.name else layer.unit
        alpha = f"{layer.alpha:.3f}" if layer.alpha is not None else "-"
        status = layer.status if layer.reason is None else f"{layer.status}: {layer.reason}"
        table.add_row(layer.name, unit, f"{layer.params:,}", alpha, value, status)
    console.print(table)
    console.print(f"estimator {advice.estimator}, grouping {advice.grouping}; {budget_line(advice)}")
    counts = Counter(layer.status for layer in advice.layers)
    if counts.get("neutral") or counts.get("left out"):
        console.print(f"{counts.get('fitted', 0)} fitted, {counts.get('neutral', 0)} neutral (no alpha: the "
                      f"neutral setting), {counts.get('left out', 0)} left out (the base setting)")
    for note in advice.notes:
        console.print(f"note: {note}")


def mapping_json(advice: Advice) -> str:
    return json.dumps(advice.mapping(), indent=2, allow_nan=False)
