"""`htmp check` of a training run: its rules judged over the run's steps, and its trend rules.

A rule with `steps = "last"` (the default, the built-in rules included) judges the last analysed
step: the weights the run ends with (its first steps are random-like by nature). One with
`steps = "any"` fails where it is broken at any step, and says the first such step for each layer. A trend
rule ([[check.trend]]) compares the first analysed step with the last.
"""

from __future__ import annotations

import math
import re

from htmp_cli.gate import SUMMARY_FIGURES, Rule, TrendRule, Verdict, Violation, combine, evaluate
from htmp_cli.trajectory import Trajectory


def evaluate_run(trajectory: Trajectory, rules: tuple[Rule, ...], trend_rules: tuple[TrendRule, ...] = ()) -> Verdict:
    """The verdict on a run (see the module's help)."""
    last = trajectory.steps[-1]
    at_last = evaluate(last.report, tuple(r for r in rules if r.steps == "last"))
    at_last = Verdict(rules=at_last.rules, violations=tuple(_at_step(v, last.step) for v in at_last.violations),
                      checked_layers=at_last.checked_layers,
                      looked_at={k: f"{v}, at step {last.step} (the last)" for k, v in at_last.looked_at.items()})
    return combine(at_last, _at_any_step(trajectory, tuple(r for r in rules if r.steps == "any")),
                   _trends(trajectory, trend_rules))


def _at_step(violation: Violation, step: int) -> Violation:
    return Violation(violation.rule, violation.layer, violation.value, f"at step {step}: {violation.message}")


def _at_any_step(trajectory: Trajectory, rules: tuple[Rule, ...]) -> Verdict:
    if not rules:
        return Verdict(rules=(), violations=())
    first: dict[tuple[str, str | None], tuple[int, Violation]] = {}
    broken_at: dict[tuple[str, str | None], int] = {}
    checked: dict[str, int] = {}
    for run_step in trajectory.steps:
        verdict = evaluate(run_step.report, rules)
        for name, count in verdict.checked_layers.items():
            checked[name] = max(checked.get(name, 0), count)
        for violation in verdict.violations:
            key = (violation.rule.name, violation.layer)
            first.setdefault(key, (run_step.step, violation))
            broken_at[key] = broken_at.get(key, 0) + 1
    total = len(trajectory.steps)
    violations = tuple(Violation(v.rule, v.layer, v.value, f"broken first at step {step} (at {broken_at[key]} of {total} "
                                                            f"steps): {v.message}")
                       for key, (step, v) in first.items())
    return Verdict(rules=rules, violations=violations, checked_layers=checked,
                   looked_at={r.name: f"every analysed step ({total})" for r in rules})


def _trends(trajectory: Trajectory, rules: tuple[TrendRule, ...]) -> Verdict:
    violations: list[Violation] = []
    checked: dict[str, int] = {}
    looked_at: dict[str, str] = {}
    first, last = trajectory.steps[0], trajectory.steps[-1]
    span = f"step {first.step} to step {last.step}"
    for rule in rules:
        if rule.summary is not None:
            read = SUMMARY_FIGURES[rule.summary]
            checked[rule.name], looked_at[rule.name] = 1, f"the summary, {span}"
            change = _change(read(first.report.summary), read(last.report.summary))
            if change is not None and not _moved(change, rule):
                violations.append(Violation(rule, None, change, f"{rule.summary} changed by {change:+.4g} ({span})"))
            continue
        assert rule.metric is not None
        names = [n for n in trajectory.layer_names if rule.layers is None or re.search(rule.layers, n)]
        checked[rule.name], looked_at[rule.name] = len(names), f"{len(names)} layers, {span}"
        for name in names:
            values = [v for _, v in trajectory.series(name, rule.metric) if v is not None and math.isfinite(v)]
            change = values[-1] - values[0] if len(values) >= 2 else None
            if change is not None and not _moved(change, rule):
                violations.append(Violation(rule, name, change, f"{rule.metric} changed by {change:+.4g} ({span})"))
    return Verdict(rules=rules, violations=tuple(violations), checked_layers=checked, looked_at=looked_at)


def _change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return None
    return after - before


def _moved(change: float, rule: TrendRule) -> bool:
    if rule.direction == "falling":
        return change <= -rule.min_change
    return change >= rule.min_change
