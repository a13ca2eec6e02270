"""Spectra while a model trains: its weights analysed every so many steps, kept as a trajectory.

    monitor = htmp_cli.Monitor(model, every=100, log="run/htmp.jsonl")
    for step, batch in enumerate(batches, start=1):
        ...                                  # forward, backward, optimizer step
        monitor.step(step)                   # analyses at steps 100, 200, ...
    monitor.close()
    monitor.history()                        # one row per layer per analysed step

In the foreground (the default) `step` analyses the model where it lives and training waits for it.
With `background=True` it takes a copy of the weight matrices on their own device (a fraction of a
second on the CPU for small models) and training goes on while a thread and a second process
analyse the copy: the weights on the CPU are solved and fitted in that process, those on a GPU
solved there by this thread and fitted in that process. At most two copies exist at once (one
analysed, one waiting: a step due while both are taken waits, before copying, for the older to
finish, and `waited_seconds` says how long training waited in all); a copy of weights on the CPU
is also pickled to the helper process one matrix at a time.
"""

from __future__ import annotations

import collections
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from htmp_cli.errors import HtmpError, OptionError
from htmp_cli.loaders import Checkpoint
from htmp_cli.options import AnalysisOptions
from htmp_cli.results import LayerResult, Report

if TYPE_CHECKING:
    from htmp_cli.gate import Rule, Violation

_DONE = None  # what the worker thread reads to end
_UNCOLLECTED = 100  # finished analyses kept for `collect` (a plain loop may never call it)


@dataclass(frozen=True)
class StepReport:
    """One analysed step: its number, when its weights were taken (seconds since the epoch), the
    report, and the stop rules it broke (`Monitor(stop_on=...)`; errors stop, warnings are said)."""

    step: int
    time: float
    report: Report
    violations: tuple[Violation, ...] = ()

    @property
    def stops(self) -> bool:
        return any(v.rule.severity == "error" for v in self.violations)


@dataclass(frozen=True)
class StopReason:
    """Why a monitor says stop: the step whose analysis broke the rule, and the violation."""

    step: int
    violation: Violation

    def __str__(self) -> str:
        rule, where = self.violation.rule, f" ({self.violation.layer})" if self.violation.layer else ""
        return f"rule {rule.name!r} ({rule.what}) broken at step {self.step}{where}: {self.violation.message}"


StopRules = Union[str, "os.PathLike[str]", Mapping[str, Any], Sequence[Mapping[str, Any]]]


def stop_rules(stop_on: StopRules | None) -> tuple[Rule, ...]:
    """The rules of `stop_on`: a list of rule tables (as htmp.toml's [[check.rules]], e.g.
    `{"name": "mean-alpha", "summary": "mean_alpha", "min": 2}`), the htmp table of a configuration
    (its check rules, the built-in ones included unless `check.defaults = false`), or the path of an
    htmp.toml or pyproject.toml. Raises ConfigError naming what it cannot use."""
    from htmp_cli.gate import load_config, parse_config, parse_rule

    if stop_on is None:
        return ()
    if isinstance(stop_on, (str, os.PathLike)):
        path = Path(stop_on)
        config = parse_config(load_config(path), str(path))
    elif isinstance(stop_on, Mapping):
        if "name" in stop_on:
            raise OptionError("stop_on got one rule table; pass a list of rules (stop_on=[{...}]), or a whole "
                              "configuration table ({'check': {'rules': [...]}})")
        config = parse_config(dict(stop_on), "stop_on")
    elif isinstance(stop_on, Sequence):
        return tuple(parse_rule(entry, f"stop_on[{k}]") for k, entry in enumerate(stop_on))
    else:
        raise OptionError(f"stop_on must be rule tables, a configuration table or a path, got {type(stop_on).__name__}")
    if config.trend_rules:
        raise OptionError(f"stop_on: {config.trend_rules[0].name!r} is a trend rule ([[check.trend]]): it judges a "
                          "whole run, after it (htmp check RUN), not one analysis")
    return config.rules


def training_scalars(result: StepReport, prefix: str = "htmp", layers: bool = True) -> dict[str, float]:
    """The numbers a training logger plots for one analysis, under stable names: the summary means
    (`htmp/mean_alpha`), the layer counts by phase (`htmp/phase/random-like`), the step the weights
    were taken at, and (with `layers`) each layer's alpha and kappa (`htmp/alpha/<layer>`,
    `htmp/kappa/<layer>`)."""
    summary = result.report.summary
    scalars: dict[str, float] = {f"{prefix}/step": float(result.step), f"{prefix}/n_layers": float(summary.n_layers),
                                 f"{prefix}/n_failed_layers": float(summary.n_failed_layers)}
    scalars.update({f"{prefix}/mean_{name}": float(value) for name, value in summary.means.items()
                    if value is not None and math.isfinite(value)})
    scalars.update({f"{prefix}/phase/{phase}": float(count) for phase, count in summary.phase_counts.items()})
    for layer in result.report.layers if layers else ():
        for name, value in (("alpha", layer.alpha), ("kappa", layer.kappa)):
            if value is not None and math.isfinite(value):
                scalars[f"{prefix}/{name}/{layer.name}"] = float(value)
    return scalars


class Monitor:
    """Analyses a model's weights at every `every`-th step of its training.

    model: a torch module (or a mapping of names to tensors that training updates in place).
    every: the cadence, in steps; `step(n)` analyses when n is a multiple of it.
    log: a JSON Lines file that receives one record per layer per analysed step (htmp_cli.runlog);
        appended to if it exists. Without one the records are kept in memory for `history()`.
    background: analyse a copy while training goes on (see the module's help), instead of in
        the training loop.
    stop_on: rules (see `stop_rules`) judged on each analysis; when one of severity "error" holds,
        `should_stop` turns true and `stop_reason` says which rule and where.
    options: the analysis options of `htmp_cli.analyze` (`min_dim=`, `htmp=False`, ...), with its
        defaults: every fit, every matrix with both sides at least 10.
    """

    def __init__(self, model: Any, *, every: int = 100, log: str | os.PathLike[str] | None = None,
                 background: bool = False, stop_on: StopRules | None = None, **options: Any) -> None:
        from htmp_cli.loaders.memory import is_in_memory_source

        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise OptionError(f"every must be a whole number of steps, at least 1, got {every!r}")
        if isinstance(model, (str, os.PathLike)) or not is_in_memory_source(model):
            raise OptionError(f"Monitor watches a model in memory (a torch module or a state dict), "
                              f"got {type(model).__name__}; for checkpoints on disk use htmp_cli.analyze")
        self.model = model
        self.every = every
        self.background = background
        self.options = AnalysisOptions.from_mapping(options)
        self.rules = stop_rules(stop_on)
        self.stop_reason: StopReason | None = None
        self.log_path = Path(log) if log is not None else None
        self.waited_seconds = 0.0
        self._writer = None
        if self.log_path is not None:
            from htmp_cli.runlog import LogWriter

            self._writer = LogWriter(self.log_path, self.options, type(model).__name__)
        self._records: list[tuple[int, float, LayerResult]] = []  # the history without a log (it grows with the run)
        # Handed over by `collect`; a loop that never collects keeps only the last ones.
        self._finished: collections.deque[StepReport] = collections.deque(maxlen=_UNCOLLECTED)
        self._latest: StepReport | None = None
        self._resources: dict[str, Any] = {"fitter": None, "writer": self._writer}
        self._fitter_decided = False
        self._failure: BaseException | None = None
        self._dropped: list[int] = []  # steps not analysed after a background failure
        self._closed = False
        self._pending: queue.Queue[Any] = queue.Queue()
        self._copies = threading.Semaphore(2)  # copies of the weights alive: one analysed, one waiting
        self._worker: threading.Thread | None = None
        # A monitor dropped without close(): its helper process and log file go with it.
        self._finalizer = weakref.finalize(self, _release, self._resources, self._pending)
        if background:
            # The thread holds the monitor only while it analyses: a monitor dropped without close()
            # is collected, and its finalizer ends the thread and the helper process.
            self._worker = threading.Thread(target=_work, args=(weakref.ref(self), self._pending), name="htmp-monitor",
                                            daemon=True)
            self._worker.start()

    def __enter__(self) -> Monitor:
        return self

    @property
    def _fitter(self) -> Any:
        return self._resources["fitter"]

    @_fitter.setter
    def _fitter(self, value: Any) -> None:
        self._resources["fitter"] = value

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.close(abandon=kind is not None)

    def step(self, step: int) -> StepReport | None:
        """Analyse the model if `step` is a multiple of `every`; in the foreground, return its StepReport."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise OptionError(f"step must be a whole number, at least 0, got {step!r}")
        if self._closed:
            raise HtmpError("the monitor is closed")
        if step % self.every:
            self._raise_failure()
            return None
        return self.analyze(step)

    def analyze(self, step: int) -> StepReport | None:
        """Analyse the model now, whatever the cadence, as step `step` (an evaluation, a save)."""
        self._raise_failure()
        if self._closed:
            raise HtmpError("the monitor is closed")
        from htmp_cli.loaders.memory import open_in_memory

        taken = time.time()
        checkpoint = open_in_memory(self.model)
        if not self.background:
            return self._record(StepReport(step, taken, self._run(checkpoint, solve_in_fitter=False)))
        started = time.perf_counter()
        while not self._copies.acquire(timeout=0.2):  # a failed worker is seen rather than waited for
            self._raise_failure()
        self.waited_seconds += time.perf_counter() - started
        try:
            snapshot = _snapshot(checkpoint, self.options)
        except BaseException:
            self._copies.release()
            raise
        self._pending.put((step, taken, snapshot))
        return None

    def collect(self) -> list[StepReport]:
        """The analyses finished since the last call, in step order (foreground ones included)."""
        self._raise_failure()
        done = []
        while self._finished:
            done.append(self._finished.popleft())
        return done

    @property
    def should_stop(self) -> bool:
        """Whether an analysis finished so far broke a stop rule of severity "error" (`stop_reason`
        says which, where and at which step)."""
        return self.stop_reason is not None

    @property
    def latest(self) -> StepReport | None:
        """The last analysis finished, or None."""
        return self._latest

    def wait(self) -> None:
        """Wait until every analysis asked for has finished (and raise the error of one that failed)."""
        if self._worker is not None:
            self._pending.join()
        self._raise_failure()

    def close(self, abandon: bool = False) -> None:
        """Finish the analyses still running (`abandon`: drop them and stop the one running now),
        then stop the helper process and close the log. Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._worker is not None:
                if abandon:
                    _drain(self._pending, self._copies)
                    if self._fitter is not None:  # the running analysis fails at once, and is dropped
                        self._fitter.close(kill=True)
                self._pending.put(_DONE)
                self._worker.join()
        finally:
            self._finalizer.detach()
            _release(self._resources, kill=abandon)
        if not abandon:
            self._raise_failure()

    def history(self) -> Any:
        """The trajectory as a pandas DataFrame: one row per layer per analysed step, with `step` and
        `time` and the columns of `Report.to_dataframe` (pandas is an optional extra)."""
        from htmp_cli.report.dataframe import history_frame

        from htmp_cli.runlog import latest_analyses, read_log

        steps = read_log(self._writer.path).steps if self._writer is not None else latest_analyses(list(self._records))
        return history_frame([(s.step, s.time, layer) for s in steps for layer in s.layers])

    def _run(self, checkpoint: Checkpoint, solve_in_fitter: bool) -> Report:
        from htmp_cli.pipeline import analyze

        fitter = self._fitter_for(checkpoint)
        try:
            return analyze(checkpoint, self.options, jobs=1 if fitter is None else None, fitter=fitter,
                           solve_in_fitter=solve_in_fitter)
        except BaseException:
            if fitter is not None:  # its pipe may hold results of the analysis cut short: not reusable
                fitter.close(kill=True)
                self._fitter, self._fitter_decided = None, False
            raise

    def _fitter_for(self, checkpoint: Checkpoint) -> Any:
        """The fitting process kept for the monitor's life: always in the background (the training
        process never fits), in the foreground where the model is large enough for it to pay."""
        if not self._fitter_decided:
            from htmp_cli.jobs import fits_in_a_process
            from htmp_cli.loaders.matrices import plan_matrices

            matrices, _ = plan_matrices(checkpoint.tensors, self.options.matrix_rules)
            if self.background or fits_in_a_process(matrices, self.options, None):
                from htmp_cli.fit_process import FitProcess

                self._fitter = FitProcess(self.options)
            self._fitter_decided = True
        return self._fitter

    def _analyse_copy(self, item: tuple[int, float, Checkpoint]) -> None:
        """The background thread's work on one copy of the weights (its slot freed after)."""
        step, taken, snapshot = item
        del item  # the copy goes as soon as it is analysed, not when the next one comes
        try:
            if self._failure is None:
                self._record(StepReport(step, taken, self._run(snapshot, solve_in_fitter=True)))
            else:  # the loop is told of the failure at its next call; this step is not analysed
                self._dropped.append(step)
        except BaseException as err:  # raised in the training thread, at its next call
            self._failure = err
        finally:
            del snapshot
            self._copies.release()

    def _record(self, result: StepReport) -> StepReport:
        if self.rules:
            from htmp_cli.gate import evaluate

            result = replace(result, violations=evaluate(result.report, self.rules).violations)
            broken = next((v for v in result.violations if v.rule.severity == "error"), None)
            if self.stop_reason is None and broken is not None:
                self.stop_reason = StopReason(result.step, broken)
        if self._writer is not None:
            self._writer.append(result.step, result.time, result.report.layers)
        else:
            self._records.extend((result.step, result.time, layer) for layer in result.report.layers)
        self._latest = result
        self._finished.append(result)
        return result

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            dropped = f" (steps {', '.join(map(str, self._dropped))} were not analysed)" if self._dropped else ""
            self._dropped = []
            if isinstance(failure, HtmpError):
                raise HtmpError(f"{failure}{dropped}") from None
            raise HtmpError(f"the background analysis failed: {type(failure).__name__}: {failure}{dropped}") from failure


def _snapshot(checkpoint: Checkpoint, options: AnalysisOptions) -> Checkpoint:
    """The checkpoint with a copy of each planned matrix's tensor, made where the tensor lives."""
    from htmp_cli.loaders.matrices import plan_matrices

    matrices, _ = plan_matrices(checkpoint.tensors, options.matrix_rules)
    copies: dict[str, tuple[Any, Any]] = {}
    for spec in matrices:
        if spec.entry.key not in copies:
            stored, decode = checkpoint.read_stored(spec.entry)
            copies[spec.entry.key] = (stored.detach().clone() if hasattr(stored, "detach") else stored.copy(), decode)

    def read(entry: Any) -> tuple[Any, Any]:
        return copies[entry.key]

    return replace(checkpoint, reader=read)


def _drain(pending: queue.Queue[Any], copies: threading.Semaphore) -> None:
    while True:
        try:
            pending.get_nowait()
        except queue.Empty:
            return
        copies.release()
        pending.task_done()


def _work(monitor: weakref.ref[Monitor], pending: queue.Queue[Any]) -> None:
    while True:
        item = pending.get()
        try:
            if item is _DONE:
                return
            owner = monitor()
            if owner is None:
                return
            owner._analyse_copy(item)
            del owner, item
        finally:
            pending.task_done()


def _release(resources: dict[str, Any], pending: queue.Queue[Any] | None = None, kill: bool = True) -> None:
    """Stop the helper process and close the log (a monitor's close, or its finalizer, which also
    ends the background thread)."""
    if pending is not None:
        pending.put(_DONE)
    fitter, writer = resources.get("fitter"), resources.get("writer")
    resources["fitter"] = resources["writer"] = None
    try:
        if fitter is not None:
            fitter.close(kill=kill)
    finally:
        if writer is not None:
            writer.close()
