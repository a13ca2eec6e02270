"""PyTorch optimizer parameter groups from the spectra: TempBalance's learning rates and
AlphaDecay's weight decays, one group per analysed module.

    optimizer = torch.optim.SGD(param_groups(model, lr=0.1), momentum=0.9, weight_decay=5e-4)

Each group holds a module's own parameters (its weight and bias) with `lr` = base x factor
(and/or `weight_decay`), and names itself: `htmp_module`, `htmp_lr_factor`,
`htmp_weight_decay_factor`, so `htmp_cli.integrations.balance.SpectralBalancer` can update the
factors as training goes. Norm layers follow their layer by TempBalance's rule (`bn` in the name
read as `conv`); every other parameter is in one last group at the base settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from htmp_cli.errors import OptionError

if TYPE_CHECKING:
    from htmp_cli.advise.plan import Advice
    from htmp_cli.results import Report

REST = None  # the htmp_module of the group of every parameter no rule sets


def param_groups(model: Any, report: Report | None = None, *, lr: float | None = None,
                 weight_decay: float | None = None, estimator: str | None = None,
                 lr_ratios: tuple[float, float] | None = None,
                 weight_decay_ratios: tuple[float, float] | None = None) -> list[dict[str, Any]]:
    """Parameter groups of `model` with TempBalance's per-module `lr` (when `lr`, the base rate,
    is given) and AlphaDecay's per-module `weight_decay` (when `weight_decay` is given).

    `report` is the model's analysis (None: analysed now, in memory). `estimator` defaults to the
    papers' ("median"); the ratios to theirs ((0.5, 1.5) and (0.6666, 3)).
    """
    if lr is None and weight_decay is None:
        raise OptionError("param_groups needs lr (TempBalance) or weight_decay (AlphaDecay), or both")
    advices = balance_advice(model, report, lr=lr, weight_decay=weight_decay, estimator=estimator,
                             lr_ratios=lr_ratios, weight_decay_ratios=weight_decay_ratios)
    factors = module_factors(model, advices)
    groups: list[dict[str, Any]] = []
    assigned: set[int] = set()
    for module_name, module_factor in factors.items():
        params = [p for p in model.get_submodule(module_name).parameters(recurse=False) if id(p) not in assigned]
        if not params:
            continue
        assigned.update(id(p) for p in params)
        group: dict[str, Any] = {"params": params, "htmp_module": module_name}
        if lr is not None:
            group["lr"] = lr * module_factor["lr"]
            group["htmp_lr_factor"] = module_factor["lr"]
        if weight_decay is not None:
            group["weight_decay"] = weight_decay * module_factor["weight_decay"]
            group["htmp_weight_decay_factor"] = module_factor["weight_decay"]
            group["htmp_base_weight_decay"] = weight_decay
        groups.append(group)
    rest = [p for p in model.parameters() if id(p) not in assigned]
    if rest:
        group = {"params": rest, "htmp_module": REST}
        if lr is not None:
            group.update(lr=lr, htmp_lr_factor=1.0)
        if weight_decay is not None:
            group.update(weight_decay=weight_decay, htmp_weight_decay_factor=1.0, htmp_base_weight_decay=weight_decay)
        groups.append(group)
    return groups


def balance_advice(model: Any, report: Report | None, *, lr: float | None, weight_decay: float | None,
                   estimator: str | None, lr_ratios: tuple[float, float] | None,
                   weight_decay_ratios: tuple[float, float] | None) -> dict[str, Advice]:
    """The lr and weight-decay advice (whichever is asked) for `model`, from `report` or analysed now."""
    from htmp_cli.advise.plan import advise_report

    if report is None:
        from htmp_cli.api import analyze

        report = analyze(model, htmp=False)  # the rules need alphas only
    advices = {}
    for method, base, ratios in (("lr", lr, lr_ratios), ("weight-decay", weight_decay, weight_decay_ratios)):
        if base is None:
            continue
        low, high = ratios if ratios is not None else (None, None)
        settings = {"lr" if method == "lr" else "weight_decay": base, "min_ratio": low, "max_ratio": high}
        advices[method] = advise_report(report, method, estimator=estimator, settings=settings)
    return advices


def module_factors(model: Any, advices: dict[str, Advice]) -> dict[str, dict[str, float]]:
    """{module name: {"lr": factor, "weight_decay": factor}} for every module an advice sets, and for
    the norm layers that follow them; a module of the advice that `model` lacks is an error."""
    names = [name for name, _ in model.named_modules()]
    owner = _owners(names)
    factors: dict[str, dict[str, float]] = {}
    for method, advice in advices.items():
        key = "lr" if method == "lr" else "weight_decay"
        parts: dict[str, list[float]] = {}
        for layer in advice.layers:
            module = owner.get(layer.module)
            if module is None:
                raise OptionError(f"the report's layer {layer.name} is not a module of this model "
                                  f"(no {layer.module!r}): give the report of this model")
            parts.setdefault(module, []).append(layer.factor if layer.factor is not None else 1.0)
        for module, values in parts.items():  # a fused q/k/v split in three: the mean of its parts
            factors.setdefault(module, {"lr": 1.0, "weight_decay": 1.0})[key] = sum(values) / len(values)
    for name in names:
        follows = name.replace("bn", "conv")
        if follows != name and follows in factors and name not in factors:
            factors[name] = dict(factors[follows])
    order = [name for name, _ in model.named_modules() if name in factors]
    return {name: factors[name] for name in order}


def _owners(names: list[str]) -> dict[str, str]:
    """{name as the report has it: the model's module}. The loaders drop the wrappers' prefixes
    (DataParallel's and DDP's `module.`, torch.compile's `_orig_mod.`), the model keeps them."""
    owners: dict[str, str] = {}
    for name in names:
        owners.setdefault(name, name)
        for prefix in ("module.", "_orig_mod."):
            stripped = name
            while stripped.startswith(prefix):
                stripped = stripped[len(prefix):]
                owners.setdefault(stripped, name)
    return owners
