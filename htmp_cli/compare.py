"""The per-layer change of every metric between two Reports; no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from htmp_cli.results import LAYER_METRICS, LayerResult, Report


@dataclass(frozen=True)
class MetricChange:
    before: float | None
    after: float | None

    @property
    def delta(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before

    @property
    def relative(self) -> float | None:
        delta = self.delta
        if delta is None or self.before == 0:
            return None
        return delta / abs(self.before)


@dataclass(frozen=True)
class LayerChange:
    name: str
    phase_before: str | None
    phase_after: str | None
    status_before: str
    status_after: str
    metrics: dict[str, MetricChange]

    @property
    def phase_changed(self) -> bool:
        return self.phase_before != self.phase_after


@dataclass(frozen=True)
class ReportDiff:
    before: str
    after: str
    layers: tuple[LayerChange, ...]  # layers present in both, in the order of `after`
    only_before: tuple[str, ...]
    only_after: tuple[str, ...]
    summary: dict[str, MetricChange]  # the summary means

    @property
    def phase_changes(self) -> tuple[LayerChange, ...]:
        return tuple(layer for layer in self.layers if layer.phase_changed)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _read(layer: LayerResult, metric: str) -> float | None:
    return _number(LAYER_METRICS[metric].of(layer)) if layer.status == "success" else None


def _phase(layer: LayerResult) -> str | None:
    return layer.phase.phase if layer.status == "success" and layer.phase is not None else None


def diff_reports(before: Report, after: Report) -> ReportDiff:
    old = {layer.name: layer for layer in before.layers}
    new = {layer.name: layer for layer in after.layers}
    changes = tuple(
        LayerChange(name=name, phase_before=_phase(old[name]), phase_after=_phase(layer),
                    status_before=old[name].status, status_after=layer.status,
                    metrics={metric: MetricChange(_read(old[name], metric), _read(layer, metric)) for metric in LAYER_METRICS})
        for name, layer in new.items() if name in old)
    means_before, means_after = before.summary.means, after.summary.means
    return ReportDiff(
        before=before.source.path, after=after.source.path, layers=changes,
        only_before=tuple(name for name in old if name not in new),
        only_after=tuple(name for name in new if name not in old),
        summary={name: MetricChange(_number(means_before.get(name)), _number(means_after.get(name)))
                 for name in means_after.keys() | means_before.keys()},
    )


def diff_to_dict(diff: ReportDiff) -> dict[str, Any]:
    def change(c: MetricChange) -> dict[str, float | None]:
        return {"before": c.before, "after": c.after, "delta": c.delta, "relative": c.relative}

    return {
        "schema": "htmp.diff/1",
        "before": diff.before,
        "after": diff.after,
        "layers": [{"name": layer.name, "phase_before": layer.phase_before, "phase_after": layer.phase_after,
                    "phase_changed": layer.phase_changed, "status_before": layer.status_before,
                    "status_after": layer.status_after,
                    "metrics": {name: change(c) for name, c in layer.metrics.items()}} for layer in diff.layers],
        "only_before": list(diff.only_before),
        "only_after": list(diff.only_after),
        "summary": {name: change(c) for name, c in sorted(diff.summary.items())},
    }


def flat_rows(diff: ReportDiff) -> list[dict[str, Any]]:
    """One flat row per common layer: phase before/after and every metric before, after and delta."""
    rows = []
    for layer in diff.layers:
        row: dict[str, Any] = {"name": layer.name, "phase_before": layer.phase_before, "phase_after": layer.phase_after,
                               "phase_changed": layer.phase_changed}
        for name, c in layer.metrics.items():
            row.update({f"{name}_before": c.before, f"{name}_after": c.after, f"{name}_delta": c.delta})
        rows.append(row)
    return rows
