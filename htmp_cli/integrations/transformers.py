"""htmp in Hugging Face's Trainer: spectra every N steps, at evaluations or at saves.

    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.add_callback(HTMPCallback(trainer, every=50, stop_on=[{"name": "mean-alpha",
                                                                    "summary": "mean_alpha", "min": 2}]))

Given the trainer, the callback hands its scalars to every logger the run reports to (TensorBoard,
W&B, ...: the Trainer's TensorBoard writer files them as `train/htmp/mean_alpha`,
`train/htmp/alpha/<layer>`, ...), as `trainer.log` would but without printing them or touching the
step's own logging; without it they go to the JSON Lines log only (a transformers callback is not
handed the trainer). The log defaults to
`<output_dir>/htmp.jsonl`. When a stop rule fires, training stops the Trainer's way
(`control.should_training_stop`) at the end of that step. Needs the transformers extra.
"""

from __future__ import annotations

import os
from typing import Any

from htmp_cli.errors import HtmpError
from htmp_cli.integrations.watch import TrainingWatch, logger
from htmp_cli.monitor import StepReport, StopRules

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import DefaultFlowCallback, PrinterCallback, ProgressCallback
except ImportError:
    raise HtmpError("htmp_cli.integrations.transformers needs transformers: "
                    "pip install 'htmp-cli[transformers]' (or transformers)") from None


class HTMPCallback(TrainerCallback):
    """Analyse the model's weights during a Trainer run.

    trainer: the Trainer, for its loggers (see the module's help); None: the JSON Lines log only.
    every: analyse at every `every`-th optimizer step (None: not by steps).
    at_evaluate, at_save: also analyse at each evaluation, at each checkpoint save.
    log: the JSON Lines log (default `<output_dir>/htmp.jsonl`).
    background: analyse a copy while training goes on (`htmp_cli.Monitor`); scalars are then
        logged at the step they are ready, with `htmp/step` saying which step they describe.
    stop_on: stop rules (`htmp_cli.monitor.stop_rules`).
    prefix: the scalars' names start with it.
    layer_scalars: log each layer's alpha and kappa too (two series per layer), not only the
        summary's.
    options: the analysis options of `htmp_cli.analyze`.
    """

    def __init__(self, trainer: Any = None, *, every: int | None = 100, at_evaluate: bool = False,
                 at_save: bool = False, log: str | os.PathLike[str] | None = None, background: bool = False,
                 stop_on: StopRules | None = None, prefix: str = "htmp", layer_scalars: bool = True,
                 **options: Any) -> None:
        self.trainer = trainer
        self.watch = TrainingWatch(every=every, at_evaluate=at_evaluate, at_save=at_save, log=log,
                                   background=background, stop_on=stop_on, prefix=prefix,
                                   layer_scalars=layer_scalars, options=options)
        self._said_no_trainer = False

    @property
    def monitor(self) -> Any:
        """The `htmp_cli.Monitor` of the current run (None before training starts)."""
        return self.watch.monitor

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if self.trainer is None and not self._said_no_trainer:
            logger.warning("htmp: HTMPCallback was not given the trainer: its scalars go to the JSON Lines log only "
                           "(HTMPCallback(trainer, ...) sends them to the trainer's loggers)")
            self._said_no_trainer = True
        self.watch.start(model, args.output_dir)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.watch.on_step(state.global_step)
            self.watch.publish(self._log)
        self._stop_if_asked(args, control, self.watch.due(state.global_step))

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.watch.on_evaluate(state.global_step)
            self.watch.publish(self._log)
        self._stop_if_asked(args, control, self.watch.at_evaluate)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.watch.on_save(state.global_step)
            self.watch.publish(self._log)
        self._stop_if_asked(args, control, self.watch.at_save)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.watch.finish()
            self.watch.publish(self._log)

    def _stop_if_asked(self, args: Any, control: Any, analysed_here: bool) -> None:
        """Stop the Trainer's way when the main process's analysis broke a stop rule; in a
        distributed run the decision is broadcast to every rank at the events every rank knows were
        analysed, so that all of them leave the loop together."""
        stop = self.watch.should_stop
        if args.world_size > 1:
            if not analysed_here:
                return
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                decision = [stop]
                dist.broadcast_object_list(decision, src=0)
                stop = bool(decision[0])
        if stop:
            control.should_training_stop = True

    def _log(self, result: StepReport, scalars: dict[str, float]) -> None:
        """The scalars to the trainer's loggers, as `trainer.log` hands logs to them, but not to its
        console printers (every layer's numbers at every analysis) nor to its flow control (whose
        `on_log` clears `should_log`: the step's own loss log would be lost)."""
        if self.trainer is None:
            return
        handler = self.trainer.callback_handler
        for callback in handler.callbacks:
            if callback is self or isinstance(callback, (DefaultFlowCallback, PrinterCallback, ProgressCallback)):
                continue
            callback.on_log(self.trainer.args, self.trainer.state, self.trainer.control, model=handler.model,
                            processing_class=handler.processing_class, optimizer=handler.optimizer,
                            lr_scheduler=handler.lr_scheduler, train_dataloader=handler.train_dataloader,
                            eval_dataloader=handler.eval_dataloader, logs=dict(scalars))


class BalanceCallback(TrainerCallback):
    """TempBalance (per-module learning rates) and AlphaDecay (weight decays) in a Trainer run.

    The Trainer must train with an optimizer built from `htmp_cli.advise.param_groups`:

        optimizer = torch.optim.AdamW(param_groups(model, lr=5e-5, weight_decay=0.01))
        trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None),
                          callbacks=[BalanceCallback()])

    The Trainer's schedule goes on (its LambdaLR's base rates are rescaled with the groups').
    every_epochs / every_steps: the cadence (default: the papers', once an epoch when the lr is
    balanced, every 500 steps for weight decay alone). The other arguments are SpectralBalancer's.
    After each update, `balancer.advice` holds the advice applied.
    """

    def __init__(self, *, every_epochs: int | None = None, every_steps: int | None = None,
                 estimator: str | None = None, lr_ratios: tuple[float, float] | None = None,
                 weight_decay_ratios: tuple[float, float] | None = None) -> None:
        self.every_epochs, self.every_steps = every_epochs, every_steps
        self.settings = dict(estimator=estimator, lr_ratios=lr_ratios, weight_decay_ratios=weight_decay_ratios)
        self.balancer: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       lr_scheduler: Any = None, **kwargs: Any) -> None:
        from htmp_cli.integrations.balance import SpectralBalancer

        self.balancer = SpectralBalancer(model, optimizer, lr_scheduler, **self.settings)  # type: ignore[arg-type]
        if self.every_epochs is None and self.every_steps is None:
            self.every_epochs, self.every_steps = self.balancer.default_cadence()

    def on_step_end(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> None:
        if self.every_steps and state.global_step > 0 and state.global_step % self.every_steps == 0:
            self._rebalance(lr_scheduler)

    def on_epoch_end(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> None:
        if self.every_epochs and round(state.epoch or 0) % self.every_epochs == 0:
            self._rebalance(lr_scheduler)

    def _rebalance(self, lr_scheduler: Any) -> None:
        if lr_scheduler is not None:  # the Trainer makes its scheduler after on_train_begin's arguments are bound
            self.balancer.scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
        self.balancer.step()
