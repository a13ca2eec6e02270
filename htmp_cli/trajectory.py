"""A training run read as one trajectory: its analysed steps in order, and how each layer moved.

A run is a training log (htmp_cli.runlog, what the Monitor and the callbacks write) or a folder of
checkpoints whose names carry their step: Hugging Face Trainer's `checkpoint-<step>/`, Lightning's
`epoch=<e>-step=<step>.ckpt`, or any checkpoint file with a number in its name (the number after
"step", "iter" or "checkpoint", else the last whole number, decimals aside: `model_1200.safetensors`
is step 1200, `model-epoch=02-val_loss=0.72.ckpt` is 2). Checkpoints are analysed through
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
from htmp_cli.options import AnalysisOptions
from htmp_cli.results import LayerResult, Report, SourceInfo

if TYPE_CHECKING:
    from htmp_cli.gate import Rule, Violation

_STEP_AFTER_WORD = re.compile(r"(?:step|iter|iteration|checkpoint|ckpt)[-_=]?(\d+)", re.IGNORECASE)
_WHOLE_NUMBER = re.compile(r"(?<![\d.])\d+(?![\d]|\.\d)")  # not a part of a decimal (val_loss=0.91)
_SHARD = re.compile(r"-\d+-of-\d+$")  # model-00001-of-00002: a shard's number, not a step


@dataclass(frozen=True)
class RunStep:
    """One analysed step of a run: its report, when its weights were taken (a log's), and the checkpoint."""

    step: int
    report: Report
    time: float | None = None
    path: Path | None = None

    def layer(self, name: str) -> LayerResult | None:
        """The layer of that name at this step, or None."""
        index = self.__dict__.get("_by_name")
        if index is None:  # built once: a run's figures and rules look every layer up at every step
            index = {layer.name: layer for layer in self.report.layers}
            object.__setattr__(self, "_by_name", index)
        return index.get(name)


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
    """When a rule was broken over the run: the first and last analysed step, and at how many."""

    rule: Rule
    first_broken: int | None
    last_broken: int | None
    broken_at: int
    first_violations: tuple[Violation, ...]  # at the first step it was broken


@dataclass(frozen=True)
class Trajectory:
    """A run's analysed steps, in step order; `skipped` names the checkpoints left out, and why."""

    source: Path
    kind: str  # "log" or "checkpoints"
    steps: tuple[RunStep, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()  # what reading the run noticed (earlier runs in a log, a cut-short line)

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
        return [(s.step, read(found) if (found := s.layer(layer)) is not None else None) for s in self.steps]

    def phase_of(self, layer: str) -> list[tuple[int, str | None]]:
        return [(s.step, _phase(s.layer(layer))) for s in self.steps]

    def transitions(self) -> tuple[PhaseTransition, ...]:
        """Every change of a layer's phase from its last known one (a step where its analysis failed
        is passed over), in step order."""
        found = []
        known: dict[str, tuple[int, str]] = {}
        for run_step in self.steps:
            for layer in run_step.report.layers:
                after = _phase(layer)
                if after is None:
                    continue
                before = known.get(layer.name)
                if before is not None and before[1] != after:
                    found.append(PhaseTransition(layer.name, before[0], run_step.step, before[1], after))
                known[layer.name] = (run_step.step, after)
        return tuple(found)

    def never_left(self, phase: str = "random-like") -> tuple[str, ...]:
        """The layers in `phase` at every step they were analysed."""
        return tuple(name for name in self.layer_names
                     if all(p == phase for _, p in self.phase_of(name) if p is not None)
                     and any(p is not None for _, p in self.phase_of(name)))

    def rule_spans(self, rules: tuple[Rule, ...]) -> tuple[RuleSpan, ...]:
        """For each rule: at which steps it was broken (had a violation, of either severity)."""
        from htmp_cli.gate import evaluate

        verdicts = [(s.step, evaluate(s.report, rules)) for s in self.steps]
        spans = []
        for rule in rules:
            held = [(step, tuple(v for v in verdict.violations if v.rule.name == rule.name)) for step, verdict in verdicts]
            held = [(step, violations) for step, violations in held if violations]
            spans.append(RuleSpan(rule, held[0][0] if held else None, held[-1][0] if held else None, len(held),
                                  held[0][1] if held else ()))  # held: the steps where it was broken
        return tuple(spans)


def step_of(path: Path) -> int | None:
    """The step a checkpoint's name carries (see the module's help), or None."""
    from htmp_cli.scan.discovery import CHECKPOINT_SUFFIXES

    name = path.name
    for suffix in (".index.json", *CHECKPOINT_SUFFIXES):
        if not path.is_dir() and name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = _SHARD.sub("", name)
    words = _STEP_AFTER_WORD.findall(name)
    if words:
        return int(words[-1])
    numbers = _WHOLE_NUMBER.findall(name)
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
    notes = list(run.notes)
    if run.earlier_runs:
        notes.insert(0, f"the log holds {run.earlier_runs + 1} runs (a new run appended to it starts again at "
                        "its first step); the last is read")
    return Trajectory(source=run.path, kind="log", steps=tuple(steps), notes=tuple(notes))


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
        parent = unit.path.parent
        while step is None and parent != folder and folder in parent.parents:  # checkpoint-10/adapter_model.safetensors
            step = step_of(parent)
            parent = parent.parent
        if step is None:
            skipped.append((str(unit.path), "no step in its name"))
        elif step in by_step:
            raise HtmpError(f"{folder}: two checkpoints named for step {step}: {by_step[step].path} and {unit.path} "
                            "(the step is the number after 'step', 'iter' or 'checkpoint' in a name, else its last "
                            "whole number)")
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


def load_run(path: str | os.PathLike[str], options: AnalysisOptions, db: str | os.PathLike[str], jobs: int,
             listener: Any = None, notice: Any = None) -> Trajectory:
    """The trajectory of a training log, or of a run folder's checkpoints analysed (with `options`,
    by `jobs` worker processes) through the scan store at `db`; raises HtmpError for a path that is
    neither, or a run with no analysed step. `listener` and `notice` are the scan's (progress)."""
    from htmp_cli.scan.executors import LocalExecutor
    from htmp_cli.scan.runner import run_scan
    from htmp_cli.scan.store import ScanStore

    path = Path(path)
    if is_run_log(path):
        found = from_log(path)
        if not found.steps:
            raise HtmpError(f"{path}: the training log holds no analysed step yet")
        return found
    if not path.is_dir():
        raise HtmpError(f"{path}: neither a training log (htmp.jsonl) nor a folder of checkpoints" if path.exists()
                        else f"{path}: no such file or directory")
    run = find_checkpoints(path)
    with ScanStore(Path(db)) as store:
        result = run_scan(tuple(unit for _, unit in run.checkpoints), options, store, LocalExecutor(jobs),
                          listener=listener, notice=notice)
    step_of_unit = {unit.path: step for step, unit in run.checkpoints}
    reports, failures = {}, {}
    for row in result.rows:
        step = step_of_unit[row.unit.path]
        if row.result.status == "success" and row.result.report is not None:
            reports[step] = row.result.report
        else:
            failures[step] = row.result.error or "no report"
    found = from_checkpoints(run, reports, failures)
    if not found.steps:
        raise HtmpError(f"{path}: no checkpoint could be analysed ({found.skipped[-1][1]})")
    return found


def is_run_log(path: Path) -> bool:
    from htmp_cli.runlog import is_log_file

    return path.is_file() and is_log_file(path)


def is_run_folder(path: Path) -> bool:
    """A folder that is not itself one checkpoint (one `htmp analyze` would open): `htmp check` and
    `htmp report` read it as a run of step checkpoints."""
    from htmp_cli.loaders import open_checkpoint

    if not path.is_dir():
        return False
    try:
        open_checkpoint(path)
    except HtmpError:
        return True
    return False


def holds_step_checkpoints(path: Path) -> int:
    """How many step checkpoints lie under a folder (0 where it has none, or is no run)."""
    try:
        return len(find_checkpoints(path).checkpoints)
    except HtmpError:
        return 0


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
        "notes": list(trajectory.notes),
        "checkpoints": [{"step": s.step, "path": str(s.path)} for s in trajectory.steps if s.path is not None],
        "summary": summary_table(trajectory, ("alpha", "kappa", "stable_rank", "log_spectral_norm")),
        "transitions": [vars(t) for t in trajectory.transitions()],
        "never_left_random_like": list(trajectory.never_left("random-like")),
        "rules": [{"name": s.rule.name, "severity": s.rule.severity, "first_broken": s.first_broken,
                   "last_broken": s.last_broken, "steps_broken": s.broken_at,
                   "first_violations": [v.text for v in s.first_violations]}
                  for s in trajectory.rule_spans(rules)],
        "layers": {name: {"alpha": trajectory.series(name, "alpha"), "kappa": trajectory.series(name, "kappa"),
                          "phase": trajectory.phase_of(name)} for name in trajectory.layer_names},
    }


def _phase(layer: LayerResult | None) -> str | None:
    if layer is None or layer.status != "success" or layer.phase is None:
        return None
    return layer.phase.phase
