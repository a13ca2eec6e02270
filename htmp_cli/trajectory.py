"""A training run read as one trajectory: its analysed steps in order, and how each layer moved.

A run is a training log (htmp_cli.runlog, what the Monitor and the callbacks write) or a folder of
checkpoints whose names carry their step: Hugging Face Trainer's `checkpoint-<step>/`, Lightning's
`epoch=<e>-step=<step>.ckpt`, or any checkpoint file with a number in its name (the number after
"step", else the last one: `model_1200.safetensors` is step 1200). Checkpoints are analysed through
the scan store, so a re-run, and a later `htmp scan` of the same files, reuse their results.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from htmp_cli import __version__
from htmp_cli.errors import HtmpError
from htmp_cli.results import LayerResult, Report, SourceInfo

if TYPE_CHECKING:
    from htmp_cli.gate import Rule, Violation

_STEP_AFTER_WORD = re.compile(r"(?:step|iter|iteration|checkpoint|ckpt)[-_=]?(\d+)", re.IGNORECASE)
_ANY_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class RunStep:
    """One analysed step of a run: its report, when its weights were taken (a log's), and the checkpoint."""

    step: int
    report: Report
    time: float | None = None
    path: Path | None = None


@dataclass(frozen=True)
class PhaseTransition:
    """A layer whose phase at `step` differs from its phase at the analysis before (`since`)."""

    layer: str
    since: int
    step: int
    before: str
    after: str


@dataclass(frozen=True)
class RuleSpan:
    """When a rule held over the run: the first and last analysed step, and at how many steps."""

    rule: Rule
    first: int | None
    last: int | None
    held_at: int
    first_violations: tuple[Violation, ...]  # at the first step it held


@dataclass(frozen=True)
class Trajectory:
    """A run's analysed steps, in step order; `skipped` names the checkpoints left out, and why."""

    source: Path
    kind: str  # "log" or "checkpoints"
    steps: tuple[RunStep, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Every layer seen, in the order of its first appearance."""
        names: dict[str, None] = {}
        for run_step in self.steps:
            names.update(dict.fromkeys(layer.name for layer in run_step.report.layers))
        return tuple(names)

    def series(self, layer: str, metric: str) -> list[tuple[int, float | None]]:
        """(step, value) of one layer metric (a name of results.LAYER_METRICS) at every step."""
        from htmp_cli.results import LAYER_METRICS

        read = LAYER_METRICS[metric].of
        return [(s.step, read(found) if (found := _find(s.report, layer)) is not None else None) for s in self.steps]

    def phase_of(self, layer: str) -> list[tuple[int, str | None]]:
        return [(s.step, _phase(_find(s.report, layer))) for s in self.steps]

    def transitions(self) -> tuple[PhaseTransition, ...]:
        """Every change of a layer's phase between consecutive analyses, in step order."""
        found = []
        for earlier, later in zip(self.steps, self.steps[1:]):
            for layer in later.report.layers:
                before, after = _phase(_find(earlier.report, layer.name)), _phase(layer)
                if before is not None and after is not None and before != after:
                    found.append(PhaseTransition(layer.name, earlier.step, later.step, before, after))
        return tuple(found)

    def never_left(self, phase: str = "random-like") -> tuple[str, ...]:
        """The layers in `phase` at every step they were analysed."""
        return tuple(name for name in self.layer_names
                     if all(p == phase for _, p in self.phase_of(name) if p is not None)
                     and any(p is not None for _, p in self.phase_of(name)))

    def rule_spans(self, rules: tuple[Rule, ...]) -> tuple[RuleSpan, ...]:
        """For each rule: at which steps it held (it had a violation of any severity)."""
        from htmp_cli.gate import evaluate

        verdicts = [(s.step, evaluate(s.report, rules)) for s in self.steps]
        spans = []
        for rule in rules:
            held = [(step, tuple(v for v in verdict.violations if v.rule.name == rule.name)) for step, verdict in verdicts]
            held = [(step, violations) for step, violations in held if violations]
            spans.append(RuleSpan(rule, held[0][0] if held else None, held[-1][0] if held else None, len(held),
                                  held[0][1] if held else ()))
        return tuple(spans)


def step_of(path: Path) -> int | None:
    """The step a checkpoint's name carries (see the module's help), or None."""
    name = path.name if path.is_dir() else path.name.split(".")[0]
    words = _STEP_AFTER_WORD.findall(name)
    if words:
        return int(words[-1])
    numbers = _ANY_NUMBER.findall(name)
    return int(numbers[-1]) if numbers else None


def from_log(path: str | os.PathLike[str]) -> Trajectory:
    """The trajectory a training log holds."""
    from htmp_cli.runlog import read_log
    from htmp_cli.summary import summarize

    run = read_log(path)
    steps = []
    for logged in run.steps:
        source = SourceInfo(path=f"{run.path} step {logged.step}", format="htmp-log", files=(str(run.path),),
                            size_bytes=0, fingerprint="", notes=())
        report = Report(htmp_version=run.htmp_version, source=source, options=run.options, layers=logged.layers,
                        skipped=(), summary=summarize(logged.layers, (), {}, 1))
        steps.append(RunStep(logged.step, report, time=logged.time))
    return Trajectory(source=run.path, kind="log", steps=tuple(steps))


@dataclass(frozen=True)
class CheckpointRun:
    """The checkpoints of a run folder, by step, before any is analysed."""

    folder: Path
    checkpoints: tuple[tuple[int, Any], ...]  # (step, scan unit), in step order
    skipped: tuple[tuple[str, str], ...]


def find_checkpoints(folder: str | os.PathLike[str]) -> CheckpointRun:
    """The checkpoints under a run folder with the step each name carries; raises HtmpError when
    there are none, or two of one step."""
    from htmp_cli.scan.discovery import discover

    folder = Path(folder)
    units = discover([str(folder)]).units
    by_step: dict[int, Any] = {}
    skipped = []
    for unit in units:
        step = step_of(unit.path)
        if step is None:
            skipped.append((str(unit.path), "no step in its name"))
        elif step in by_step:
            raise HtmpError(f"{folder}: two checkpoints of step {step}: {by_step[step].path} and {unit.path} "
                            "(keep one run per folder)")
        else:
            by_step[step] = unit
    if not by_step:
        raise HtmpError(f"{folder}: no checkpoint has a step in its name (checkpoint-<step>/, "
                        "epoch=<e>-step=<step>.ckpt, or a number in the file name)")
    return CheckpointRun(folder, tuple(sorted(by_step.items(), key=lambda item: item[0])), tuple(skipped))


def from_checkpoints(run: CheckpointRun, reports: dict[int, Report], failures: dict[int, str]) -> Trajectory:
    """The trajectory of a run folder's checkpoints, analysed (by step: their reports, or why not)."""
    steps = tuple(RunStep(step, reports[step], path=unit.path) for step, unit in run.checkpoints if step in reports)
    skipped = run.skipped + tuple((str(unit.path), f"analysis failed: {failures[step]}")
                                  for step, unit in run.checkpoints if step in failures)
    return Trajectory(source=run.folder, kind="checkpoints", steps=steps, skipped=skipped)


def is_run_log(path: Path) -> bool:
    from htmp_cli.runlog import is_log_file

    return path.is_file() and is_log_file(path)


def is_run_folder(path: Path) -> bool:
    """A folder that is not itself one checkpoint (no model.safetensors, index or pytorch_model.bin
    in it): `htmp check` reads it as a run of step checkpoints."""
    from htmp_cli.loaders import FOLDER_FILES

    return path.is_dir() and not any((path / name).is_file() for name in FOLDER_FILES)


def summary_table(trajectory: Trajectory, names: tuple[str, ...] = ("alpha", "kappa", "stable_rank")) -> list[dict[str, Any]]:
    """Per step: the step, the summary means of `names`, the layer counts by phase."""
    rows = []
    for run_step in trajectory.steps:
        summary = run_step.report.summary
        rows.append({"step": run_step.step, **{f"mean_{n}": summary.means.get(n) for n in names},
                     "phases": {p: c for p, c in summary.phase_counts.items() if c}})
    return rows


def to_dict(trajectory: Trajectory, rules: tuple[Rule, ...] = ()) -> dict[str, Any]:
    """The trajectory's findings in JSON form (`htmp trajectory --format json`)."""
    return {
        "schema": "htmp.trajectory/1",
        "htmp_version": __version__,
        "source": str(trajectory.source),
        "kind": trajectory.kind,
        "steps": [s.step for s in trajectory.steps],
        "skipped": [{"path": path, "reason": reason} for path, reason in trajectory.skipped],
        "summary": summary_table(trajectory, ("alpha", "kappa", "stable_rank", "log_spectral_norm")),
        "transitions": [vars(t) for t in trajectory.transitions()],
        "never_left_random_like": list(trajectory.never_left("random-like")),
        "rules": [{"name": s.rule.name, "severity": s.rule.severity, "first_step": s.first, "last_step": s.last,
                   "steps_held": s.held_at, "first": [v.message if v.layer is None else f"{v.layer}: {v.message}"
                                                     for v in s.first_violations]}
                  for s in trajectory.rule_spans(rules)],
        "layers": {name: {"alpha": trajectory.series(name, "alpha"), "kappa": trajectory.series(name, "kappa"),
                          "phase": trajectory.phase_of(name)} for name in trajectory.layer_names},
    }


def _find(report: Report, name: str) -> LayerResult | None:
    for layer in report.layers:
        if layer.name == name:
            return layer
    return None


def _phase(layer: LayerResult | None) -> str | None:
    if layer is None or layer.status != "success" or layer.phase is None:
        return None
    return layer.phase.phase
