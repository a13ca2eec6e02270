"""`htmp trajectory` on the terminal: the means per step, the phase transitions, the layers that
never left random-like, and when each rule held."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from htmp_cli.trajectory import RuleSpan, Trajectory, summary_table

_MEANS = ("alpha", "kappa", "stable_rank")
_LISTED = 40  # transitions shown before the rest is counted
_NAMES_SHOWN = 8


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def render_trajectory(trajectory: Trajectory, spans: tuple[RuleSpan, ...], console: Console) -> None:
    steps = trajectory.steps
    layers = len(trajectory.layer_names)
    console.print(f"[bold]{escape(str(trajectory.source))}[/bold]: {_count(len(steps), 'analysed step')}, "
                  f"{steps[0].step} to {steps[-1].step}; {_count(layers, 'layer')}"
                  + (" (a training log)" if trajectory.kind == "log" else " (checkpoints)"), highlight=False)
    for note in trajectory.notes:
        console.print(f"  note: {note}", highlight=False, markup=False)
    for path, reason in trajectory.skipped:
        console.print(f"  left out: {path}: {reason}", highlight=False, markup=False)
    named = [s for s in steps if s.path is not None]
    if named:
        shown = ", ".join(f"{s.path.name} -> {s.step}" for s in named[:_NAMES_SHOWN])
        more = f", ... and {len(named) - _NAMES_SHOWN} more (-f json lists them)" if len(named) > _NAMES_SHOWN else ""
        console.print(f"  steps read from the names: {shown}{more}", highlight=False, markup=False)

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
            table.add_row(escape(t.layer), f"{t.since} -> {t.step}", t.before, t.after)
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
        rules = Table(title="Rules over the run: where each was broken", title_justify="left", show_edge=False)
        # A rule's name is what the reader looks up: it is never cut; the first violations wrap instead.
        rules.add_column("rule", no_wrap=True, min_width=max(len(span.rule.name) for span in spans))
        for column in ("severity", "first broken", "last broken", "steps broken", "the first time"):
            rules.add_column(column)
        for span in spans:
            first = "; ".join(v.text for v in span.first_violations[:2])
            more = len(span.first_violations) - 2
            rules.add_row(escape(span.rule.name), span.rule.severity, _step(span.first_broken), _step(span.last_broken),
                          f"{span.broken_at} of {len(steps)}", escape(first) + (f" (+{more} more)" if more > 0 else ""))
        console.print(rules)


def _step(step: int | None) -> str:
    return "never" if step is None else str(step)
