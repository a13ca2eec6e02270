"""TempBalance and AlphaDecay during training: re-derive the per-module factors from the current
spectra and update the optimizer's groups.

    optimizer = torch.optim.SGD(param_groups(model, lr=0.1), momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    balancer = SpectralBalancer(model, optimizer, scheduler)
    for epoch in range(epochs):
        train_one_epoch(...); scheduler.step()
        balancer.step()          # TempBalance's cadence: once an epoch (AlphaDecay's: every 500 steps)

The optimizer's groups must come from `htmp_cli.advise.param_groups` (they name their module and
factor). A learning rate is rescaled by new factor / old factor, in the group and in the
scheduler's base rates, so the global schedule (closed-form like LambdaLR, or chained like
CosineAnnealingLR) goes on multiplying it: lr_l = lr_t x factor_l, TempBalance's rule. A weight
decay is set to base x factor (no scheduler moves it).
`integrations.transformers.BalanceCallback` and `integrations.lightning.BalanceCallback` call
`step` for a Trainer run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from htmp_cli.errors import OptionError

if TYPE_CHECKING:
    from htmp_cli.advise.plan import Advice

TEMPBALANCE_EVERY_EPOCHS = 1
# Schedulers whose rates come from fields the balancer does not own (or from inner schedulers).
UNSUPPORTED_SCHEDULERS = {"OneCycleLR": "max_lr and min_lr", "CyclicLR": "max_lrs and base_lrs bounds",
                          "SequentialLR": "inner schedulers", "ChainedScheduler": "inner schedulers"}
ALPHADECAY_EVERY_STEPS = 500


class SpectralBalancer:
    """Keeps an optimizer's per-module lr and weight-decay factors in step with the spectra.

    model: the module being trained. optimizer: built from `param_groups(model, ...)`.
    scheduler: the learning-rate scheduler, if any (its base rates are rescaled with the groups').
    estimator, lr_ratios, weight_decay_ratios: as `param_groups`' (the papers' by default).
    After `step`, `advice` holds the latest {"lr": Advice, "weight-decay": Advice}.
    """

    def __init__(self, model: Any, optimizer: Any, scheduler: Any = None, *, estimator: str | None = None,
                 lr_ratios: tuple[float, float] | None = None,
                 weight_decay_ratios: tuple[float, float] | None = None) -> None:
        groups = optimizer.param_groups
        if not any("htmp_module" in group for group in groups):
            raise OptionError("SpectralBalancer needs an optimizer built from htmp_cli.advise.param_groups(model, ...): "
                              "its groups name the modules whose factors it updates")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the scheduler
        kind = type(self.scheduler).__name__
        if kind in UNSUPPORTED_SCHEDULERS:
            raise OptionError(f"SpectralBalancer cannot rescale a {kind}: it sets each group's rate from its own "
                              f"{UNSUPPORTED_SCHEDULERS[kind]}, which would undo the factors")
        self.estimator = estimator
        self.lr_ratios = lr_ratios
        self.weight_decay_ratios = weight_decay_ratios
        self.balances_lr = any("htmp_lr_factor" in group for group in groups)
        self.balances_weight_decay = any("htmp_weight_decay_factor" in group for group in groups)
        self.advice: dict[str, Advice] = {}
        self.steps = 0

    def step(self) -> dict[str, Advice]:
        """Analyse the model now and apply the new factors; returns the advice applied."""
        from htmp_cli.advise.optim import balance_advice, module_factors

        was_training = self.model.training
        try:
            advices = balance_advice(self.model, None, lr=1.0 if self.balances_lr else None,
                                     weight_decay=1.0 if self.balances_weight_decay else None,
                                     estimator=self.estimator, lr_ratios=self.lr_ratios,
                                     weight_decay_ratios=self.weight_decay_ratios)
        finally:
            self.model.train(was_training)
        factors = module_factors(self.model, advices)
        base_lrs = getattr(self.scheduler, "base_lrs", None)
        for index, group in enumerate(self.optimizer.param_groups):
            if "htmp_module" not in group:
                continue
            new = factors.get(group["htmp_module"], {"lr": 1.0, "weight_decay": 1.0})
            if self.balances_lr and "htmp_lr_factor" in group:
                ratio = new["lr"] / group["htmp_lr_factor"]
                group["lr"] *= ratio
                if "initial_lr" in group:
                    group["initial_lr"] *= ratio
                if base_lrs is not None and index < len(base_lrs):
                    base_lrs[index] *= ratio
                group["htmp_lr_factor"] = new["lr"]
            if self.balances_weight_decay and "htmp_weight_decay_factor" in group:
                group["weight_decay"] = group["htmp_base_weight_decay"] * new["weight_decay"]
                group["htmp_weight_decay_factor"] = new["weight_decay"]
        self.advice = advices
        self.steps += 1
        return advices

    def default_cadence(self) -> tuple[int | None, int | None]:
        """(every_epochs, every_steps) as the papers do it: TempBalance once an epoch, AlphaDecay
        (weight decay alone) every 500 steps."""
        if self.balances_lr:
            return TEMPBALANCE_EVERY_EPOCHS, None
        return None, ALPHADECAY_EVERY_STEPS
