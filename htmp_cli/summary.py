"""The model summary of an analysis: counts, means over layers, phases, expert groups."""

from __future__ import annotations


import numpy as np

from htmp_cli.fits.phases import PHASE_LABELS
from htmp_cli.loaders.matrices import SkippedTensor
from htmp_cli.results import SUMMARY_MEANS, ExpertGroup, LayerResult, ModelSummary, mean_metric, mean_standard_error


def summarize(layers: tuple[LayerResult, ...], skipped: tuple[SkippedTensor, ...], timings: dict[str, float],
              workers: int = 1) -> ModelSummary:
    ok = [layer for layer in layers if layer.status == "success"]
    fitted = [layer for layer in ok if layer.power_law is not None and layer.power_law.ok]
    means = {name: mean_metric(name, layers) for name in SUMMARY_MEANS}
    warning_counts = {
        label: sum(label in layer.warnings for layer in layers) for label in ("over-trained", "under-trained")
    }
    phase_counts = {phase: sum(layer.phase is not None and layer.phase.phase == phase for layer in ok)
                    for phase in PHASE_LABELS}
    worrying = {
        "rank-collapse": [layer.name for layer in ok if layer.phase.phase == "rank-collapse"],
        "random-like": [layer.name for layer in ok if layer.phase.phase == "random-like"],
        "very heavy-tailed": [layer.name for layer in ok if layer.phase.very_heavy],
    }
    kind_counts: dict[str, int] = {}
    for layer in layers:
        kind_counts[layer.kind] = kind_counts.get(layer.kind, 0) + 1
    return ModelSummary(
        kind_counts=kind_counts,
        expert_groups=expert_groups(layers),
        n_layers=len(layers),
        n_failed_layers=len(layers) - len(ok),
        n_failed_fits=len(ok) - len(fitted),
        n_skipped=len(skipped),
        means=means,
        warning_counts=warning_counts,
        phase_counts=phase_counts,
        worrying=worrying,
        timings=timings,
        workers=workers,
        standard_errors={name: mean_standard_error(name, layers) for name in SUMMARY_MEANS},
        htmp_phase_counts={phase: sum(layer.phase is not None and layer.phase.htmp_phase == phase for layer in ok)
                           for phase in PHASE_LABELS},
        views_disagree=[layer.name for layer in ok if layer.phase is not None and layer.phase.views_agree is False],
    )


def expert_groups(layers: tuple[LayerResult, ...]) -> tuple[ExpertGroup, ...]:
    members: dict[str, list[LayerResult]] = {}
    for layer in layers:
        if layer.group is not None:
            members.setdefault(layer.group, []).append(layer)
    groups = []
    for name, group in members.items():
        alphas = [g.power_law.alpha for g in group if g.status == "success" and g.power_law is not None and g.power_law.ok]
        phases: dict[str, int] = {}
        for g in group:
            if g.phase is not None:
                phases[g.phase.phase] = phases.get(g.phase.phase, 0) + 1
        groups.append(ExpertGroup(name=name, n_experts=len(group), n_fitted=len(alphas),
                                  alpha_mean=float(np.mean(alphas)) if alphas else None,
                                  alpha_min=min(alphas) if alphas else None, alpha_max=max(alphas) if alphas else None,
                                  phase_counts=phases))
    return tuple(groups)


