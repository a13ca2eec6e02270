"""From spectra to settings: the published per-layer rules (`htmp advise`).

    from htmp_cli.advise import advise, param_groups
    advice = advise("model.safetensors", "pruning", sparsity=0.7)   # AlphaPruning
    advice.mapping()                                                  # {module: sparsity}
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1), momentum=0.9)   # TempBalance

Methods (`method`): "pruning" (AlphaPruning: sparsity per layer), "lr" (TempBalance: learning
rate), "weight-decay" (AlphaDecay), "lora-rank" (AlphaLoRA: rank per module), "bits" (AlphaQ: bit
width). Each uses by default the alpha estimator and the grouping of its authors' code and the
defaults they publish (htmp_cli.advise.plan.SPECS); docs/advise.md gives the formulas, and what
was measured here of the benefit. `htmp_cli.integrations.balance.SpectralBalancer` applies lr and
weight-decay balancing during training.
"""

from __future__ import annotations

import os
from typing import Any

from htmp_cli.advise.optim import param_groups
from htmp_cli.advise.plan import METHODS, SPECS, Advice, LayerAdvice, advise_report
from htmp_cli.errors import OptionError
from htmp_cli.results import Report, is_report_file

__all__ = ["METHODS", "SPECS", "Advice", "LayerAdvice", "advise", "param_groups", "source_options"]

FARMS_SUB_BLOCK = 128  # AlphaQ's sub-blocks are 128 x 128


def advise(source: Any, method: str, *, estimator: str | None = None, grouping: str | None = None,
           sparsity: float | None = None, epsilon: float | None = None, max_sparsity: float | None = None,
           lr: float | None = None, weight_decay: float | None = None, min_ratio: float | None = None,
           max_ratio: float | None = None, total_rank: int | None = None, power: float | None = None,
           min_rank: int | None = None, average_bits: float | None = None, bit_widths: tuple[int, ...] | None = None,
           gamma: float | None = None, jobs: int | None = None, progress: bool = False,
           **options: Any) -> Advice:
    """`method`'s per-layer settings for `source`: a Report, a saved report, or anything
    `htmp_cli.analyze` takes (analysed with `options`, its keyword analysis options).

    Parameters left None take the method's published default; one that belongs to another
    method is an error. pruning: `sparsity` (the global budget, default 0.7), `epsilon` (0.3),
    `max_sparsity` (1.0). lr: `lr` (the base rate; None: the values are the factors),
    `min_ratio`/`max_ratio` (0.5, 1.5). weight-decay: `weight_decay` (None: factors), ratios
    (0.6666, 3). lora-rank: `total_rank` (default 8 per unit), `power` (2.5), `min_rank` (1).
    bits: `average_bits` (3.5), `bit_widths` ((1, 2, 3, 4)), `gamma` (1).
    `estimator`: "csn", "median", "peak" or "farms" (default: the paper's); `grouping`: "layer"
    or "block" (alphas averaged over each transformer block; default: the paper's).
    """
    given = dict(sparsity=sparsity, epsilon=epsilon, max_sparsity=max_sparsity, lr=lr, weight_decay=weight_decay,
                 min_ratio=min_ratio, max_ratio=max_ratio, total_rank=total_rank, power=power, min_rank=min_rank,
                 average_bits=average_bits, bit_widths=bit_widths, gamma=gamma)
    if method not in SPECS:
        raise OptionError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    chosen = SPECS[method].estimator if estimator is None else estimator
    report = _report(source, source_options(chosen, options), jobs, progress)
    return advise_report(report, method, estimator=chosen, grouping=grouping, settings=given)


def source_options(estimator: str, options: dict[str, Any]) -> dict[str, Any]:
    """The analysis options of a source advised with `estimator`: "farms" turns FARMS on, with
    AlphaQ's 128 x 128 windows unless a window is given."""
    if estimator != "farms" or options.get("farms"):
        return options
    return {**options, "farms": True, "farms_window": options.get("farms_window", FARMS_SUB_BLOCK)}


def _report(source: Any, options: dict[str, Any], jobs: int | None, progress: bool) -> Report:
    saved = isinstance(source, (str, os.PathLike)) and is_report_file(source)
    if isinstance(source, Report) or saved:
        extra = {k: v for k, v in options.items() if k not in ("farms", "farms_window", "htmp")}
        if extra:
            raise OptionError(f"{', '.join(sorted(extra))}: analysis options apply to sources, not to a report "
                              "analysed already")
        if saved:
            from pathlib import Path

            return Report.from_json(Path(source))
        return source
    from htmp_cli.api import analyze

    return analyze(source, jobs=jobs, progress=progress, **{"htmp": False, **options})  # no rule reads HTMP
