"""`htmp trajectory` on the terminal: the means per step, the phase transitions, the layers that
never left random-like, and when each rule held."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from htmp_cli.trajectory import RuleSpan, Trajectory, summary_table

_MEANS = ("alpha", "kappa", "stable_rank")
_LISTED = 40  # transitions shown before the rest is counted


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def render_trajectory(trajectory: Trajectory, spans: tuple[RuleSpan, ...], console: Console) -> None:
    steps = trajectory.steps
    console.print(f"[bold]{trajectory.source}[/bold]: {len(steps)} analysed steps, {steps[0].step} to "
                  f"{steps[-1].step}; {len(trajectory.layer_names)} layers"
                  + (" (a training log)" if trajectory.kind == "log" else " (checkpoints)"), highlight=False)
    for path, reason in trajectory.skipped:
        console.print(f"  left out: {path}: {reason}", highlight=False, markup=False)

    means = Table(title="Summary per step", title_justify="left", show_edge=False)
    means.add_column("step", justify="right")
    for name in _MEANS:
        means.add_column(f"mean {name}", justify="right")
    means.add_column("phases (layers)")
    for row in summary_table(trajectory, _MEANS):
        means.add_row(str(row["step"]), *(_number(row[f"mean_{n}"]) for n in _MEANS),
                      ", ".join(f"{phase} {count}" for phase, count in row["phases"].items()))
    console.print(means)

    transitions = trajectory.transitions()
    if transitions:
        table = Table(title=f"Phase transitions ({len(transitions)})", title_justify="left", show_edge=False)
        for column in ("layer", "step", "from", "to"):
            table.add_column(column, justify="right" if column == "step" else "left")
        for t in transitions[:_LISTED]:
            table.add_row(t.layer, f"{t.since} -> {t.step}", t.before, t.after)
        console.print(table)
        if len(transitions) > _LISTED:
            console.print(f"  ... and {len(transitions) - _LISTED} more (--format json lists them all)")
    else:
        console.print("No layer changed phase between analyses.")

    stayed = trajectory.never_left("random-like")
    if stayed:
        console.print(f"Never left random-like ({len(stayed)}): {', '.join(stayed)}", highlight=False, markup=False)
    else:
        console.print("Every layer left random-like at some step (or never was).")

    if spans:
        rules = Table(title="Rules over the run", title_justify="left", show_edge=False)
        for column in ("rule", "severity", "first held", "last held", "steps held", "first time"):
            rules.add_column(column)
        for span in spans:
            first = "; ".join(v.message if v.layer is None else f"{v.layer}: {v.message}" for v in span.first_violations[:2])
            more = len(span.first_violations) - 2
            rules.add_row(span.rule.name, span.rule.severity, _step(span.first), _step(span.last),
                          f"{span.held_at} of {len(steps)}", first + (f" (+{more} more)" if more > 0 else ""))
        console.print(rules)


def _step(step: int | None) -> str:
    return "never" if step is None else str(step)
