"""What both training callbacks do, whatever the framework: when to analyse, what to log, when to stop."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from htmp_cli.errors import HtmpError, OptionError
from htmp_cli.monitor import Monitor, StepReport, StopRules, stop_rules, training_scalars
from htmp_cli.options import AnalysisOptions

logger = logging.getLogger("htmp_cli")

LOG_NAME = "htmp.jsonl"


class TrainingWatch:
    """A Monitor driven by a framework's events: steps (every `every`-th), evaluations and saves.

    `publish` hands each finished analysis's scalars to the framework's loggers and says (once,
    through the "htmp_cli" logger) which stop rule was broken; `should_stop` tells the callback to
    stop. An analysis that fails (its helper process killed, say) never stops the training: it is
    said once, and the callback analyses no more.
    """

    def __init__(self, *, every: int | None, at_evaluate: bool, at_save: bool, log: str | os.PathLike[str] | None,
                 background: bool, stop_on: StopRules | None, prefix: str, layer_scalars: bool,
                 options: dict[str, Any]) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise OptionError(f"every must be a whole number of steps, at least 1 (or None), got {every!r}")
        if every is None and not at_evaluate and not at_save:
            raise OptionError("the callback would never analyse: give every=N, at_evaluate=True or at_save=True")
        stop_rules(stop_on)  # checked now, not at the first analysis
        try:
            AnalysisOptions.from_mapping(options)
        except OptionError as err:
            raise OptionError(f"{err} (the callback's own options: every, at_evaluate or at_validation, at_save, "
                              "log, background, stop_on, prefix, layer_scalars)") from None
        self.every, self.at_evaluate, self.at_save = every, at_evaluate, at_save
        self.log, self.background, self.stop_on, self.prefix = log, background, stop_on, prefix
        self.layer_scalars = layer_scalars
        self.options = options
        self.monitor: Monitor | None = None
        self._analysed_step: int | None = None
        self._said_stop = False
        self._finished = False
        self._gave_up = False

    def start(self, model: Any, default_log_folder: str | os.PathLike[str] | None) -> None:
        if self.monitor is not None:  # a second fit() with the same callback: a new monitor
            self.finish()
        log = self.log
        if log is None and default_log_folder is not None:
            Path(default_log_folder).mkdir(parents=True, exist_ok=True)
            log = Path(default_log_folder) / LOG_NAME
        self.monitor = Monitor(model, every=self.every or 1, log=log, background=self.background,
                               stop_on=self.stop_on, **self.options)
        self._analysed_step, self._said_stop, self._finished, self._gave_up = None, False, False, False

    def due(self, step: int) -> bool:
        """Whether `step` is one the cadence analyses (every rank of a distributed run agrees)."""
        return self.every is not None and step > 0 and step % self.every == 0

    def on_step(self, step: int) -> None:
        # From step `every` on: step 0 (micro-batches before the first optimizer step) is the
        # initialisation, not a step of training.
        if self.due(step):
            self._analyze(step)

    def on_evaluate(self, step: int) -> None:
        if self.at_evaluate:
            self._analyze(step)

    def on_save(self, step: int) -> None:
        if self.at_save:
            self._analyze(step)

    def publish(self, log_scalars: Callable[[StepReport, dict[str, float]], None]) -> list[StepReport]:
        """Log the analyses finished since the last call; return them."""
        if self.monitor is None:
            return []
        try:
            finished = self.monitor.collect()
        except HtmpError as err:
            self._give_up(err)
            return []
        for result in finished:
            log_scalars(result, training_scalars(result, self.prefix, self.layer_scalars))
        reason = self.monitor.stop_reason
        if reason is not None and not self._said_stop:
            logger.warning("htmp: stopping training: %s", reason)
            self._said_stop = True
        return finished

    @property
    def should_stop(self) -> bool:
        return self.monitor is not None and self.monitor.should_stop

    def finish(self, abandon: bool = False) -> None:
        """The run ended (`abandon`: by an exception; the analyses under way are dropped)."""
        if self.monitor is not None and not self._finished:
            try:
                self.monitor.close(abandon=abandon or self._gave_up)
            except HtmpError as err:
                self._give_up(err)
        self._finished = True

    def _give_up(self, err: HtmpError) -> None:
        if not self._gave_up:
            logger.warning("htmp: the analysis failed, and the callback analyses no more (training goes on): %s", err)
        self._gave_up = True

    def _analyze(self, step: int) -> None:
        # Not before training starts or after it ends (an evaluation after `train()`), and not twice
        # for one step (a save right after the step's analysis).
        if self.monitor is None or self._finished or self._gave_up or self._analysed_step == step:
            return
        self._analysed_step = step
        try:
            self.monitor.analyze(step)
        except HtmpError as err:
            self._give_up(err)
