"""htmp in Lightning: spectra every N steps, at validations or at checkpoint saves.

    trainer = lightning.Trainer(callbacks=[HTMPCallback(every=50)], logger=TensorBoardLogger("logs"))

The scalars go to every logger of the trainer (`trainer.loggers`), at the step whose weights they
describe: `htmp/mean_alpha`, `htmp/phase/<phase>`, `htmp/alpha/<layer>`, `htmp/kappa/<layer>`. The
JSON Lines log defaults to `<trainer.log_dir or default_root_dir>/htmp.jsonl`. When a stop rule
fires, training stops Lightning's way (`trainer.should_stop`). Built on `lightning.pytorch`, or on
`pytorch_lightning` where only that is installed; needs the lightning extra.
"""

from __future__ import annotations

import os
from typing import Any

from htmp_cli.errors import HtmpError
from htmp_cli.integrations.watch import TrainingWatch
from htmp_cli.monitor import StepReport, StopRules

try:
    from lightning.pytorch import Callback
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise HtmpError("htmp_cli.integrations.lightning needs lightning: "
                        "pip install 'htmp-cli[lightning]' (or lightning)") from None


class HTMPCallback(Callback):
    """Analyse the LightningModule's weights during `trainer.fit`.

    every: analyse at every `every`-th optimizer step (None: not by steps).
    at_validation, at_save: also analyse at the end of each validation, at each checkpoint save.
    log: the JSON Lines log (default `<log_dir>/htmp.jsonl`).
    background: analyse a copy while training goes on (`htmp_cli.Monitor`).
    stop_on: stop rules (`htmp_cli.monitor.stop_rules`).
    prefix: the scalars' names start with it.
    layer_scalars: log each layer's alpha and kappa too (two series per layer), not only the
        summary's.
    options: the analysis options of `htmp_cli.analyze`.
    """

    def __init__(self, *, every: int | None = 100, at_validation: bool = False, at_save: bool = False,
                 log: str | os.PathLike[str] | None = None, background: bool = False,
                 stop_on: StopRules | None = None, prefix: str = "htmp", layer_scalars: bool = True,
                 **options: Any) -> None:
        self.watch = TrainingWatch(every=every, at_evaluate=at_validation, at_save=at_save, log=log,
                                   background=background, stop_on=stop_on, prefix=prefix,
                                   layer_scalars=layer_scalars, options=options)
        self._trainer: Any = None

    @property
    def monitor(self) -> Any:
        """The `htmp_cli.Monitor` of the current run (None before training starts)."""
        return self.watch.monitor

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self._trainer = trainer
            self.watch.start(pl_module, trainer.log_dir or trainer.default_root_dir)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.is_global_zero:
            self.watch.on_step(trainer.global_step)
            self.watch.publish(self._log)
        self._stop_if_asked(trainer, self.watch.due(trainer.global_step))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        if trainer.is_global_zero and self.watch.monitor is not None:
            self.watch.on_evaluate(trainer.global_step)
            self.watch.publish(self._log)
        self._stop_if_asked(trainer, self.watch.at_evaluate)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if trainer.is_global_zero and self.watch.monitor is not None:
            self.watch.on_save(trainer.global_step)
            self.watch.publish(self._log)
        self._stop_if_asked(trainer, self.watch.at_save)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self.watch.finish()
            self.watch.publish(self._log)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if trainer.is_global_zero:  # the analyses under way are dropped; the helper process goes
            self.watch.finish(abandon=True)

    def _stop_if_asked(self, trainer: Any, analysed_here: bool) -> None:
        """Stop Lightning's way when the main process's analysis broke a stop rule. In a distributed
        run every rank stops together (or the others would wait forever in the next collective): the
        decision is broadcast, at the events every rank knows were analysed."""
        stop = self.watch.should_stop
        if trainer.world_size > 1:
            if not analysed_here:
                return
            stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop:
            trainer.should_stop = True

    def _log(self, result: StepReport, scalars: dict[str, float]) -> None:
        for logger in self._trainer.loggers:
            logger.log_metrics(scalars, step=result.step)


class BalanceCallback(Callback):
    """TempBalance (per-module learning rates) and AlphaDecay (weight decays) in `trainer.fit`.

    The LightningModule's `configure_optimizers` must build its optimizer from
    `htmp_cli.advise.param_groups(self, lr=..., weight_decay=...)`; its scheduler, if any, goes on
    (its base rates are rescaled with the groups'). every_epochs / every_steps: the cadence
    (default: the papers', once an epoch when the lr is balanced, every 500 steps for weight decay
    alone). The other arguments are SpectralBalancer's; `balancer.advice` holds the latest advice.
    """

    def __init__(self, *, every_epochs: int | None = None, every_steps: int | None = None,
                 estimator: str | None = None, lr_ratios: tuple[float, float] | None = None,
                 weight_decay_ratios: tuple[float, float] | None = None) -> None:
        self.every_epochs, self.every_steps = every_epochs, every_steps
        self.settings = dict(estimator=estimator, lr_ratios=lr_ratios, weight_decay_ratios=weight_decay_ratios)
        self.balancer: Any = None
        self._last_step = 0  # step 0 is before any update: nothing to rebalance yet

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from htmp_cli.integrations.balance import SpectralBalancer

        configs = getattr(trainer, "lr_scheduler_configs", None) or []
        scheduler = configs[0].scheduler if configs else None
        self.balancer = SpectralBalancer(pl_module, trainer.optimizers[0], scheduler, **self.settings)  # type: ignore[arg-type]
        if self.every_epochs is None and self.every_steps is None:
            self.every_epochs, self.every_steps = self.balancer.default_cadence()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step  # with gradient accumulation, several batches end at one step
        if self.every_steps and step % self.every_steps == 0 and step != self._last_step:
            self._last_step = step
            self.balancer.step()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_epochs and (trainer.current_epoch + 1) % self.every_epochs == 0:
            self.balancer.step()
