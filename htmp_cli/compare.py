"""The per-layer change of every metric between two Reports; no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

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
    name: str  # in `after`
    phase_before: str | None
    phase_after: str | None
    status_before: str
    status_after: str
    metrics: dict[str, MetricChange]
    before_name: str | None = None  # in `before`, where the names differ (two formats)
    ks_esd: float | None = None  # KS distance between the two ESDs (non-zero eigenvalues), where both reports hold them

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
    pairing: str | None = None  # how layers were paired when the names differ, in words
    unpaired: tuple[tuple[str, str], ...] = ()  # (layer, why it has no partner), for both sides
    alpha_rank_correlation: float | None = None  # Spearman's rho of the paired layers' alphas

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
    """The per-layer change from `before` to `after`. Layers pair by name; a GGUF file against the
    same model in another format pairs through llama.cpp's tensor-name map (htmp_cli.name_map)."""
    pairing, key_before, key_after, unmapped = _pairing(before, after)
    old = {key_before.get(layer.name, layer.name): layer for layer in before.layers if layer.name not in unmapped}
    new = {key_after.get(layer.name, layer.name): layer for layer in after.layers if layer.name not in unmapped}
    changes = tuple(_change(old[key], layer) for key, layer in new.items() if key in old)
    means_before, means_after = before.summary.means, after.summary.means
    unpaired = [*unmapped.items(), *_unmatched(old, new, after.source.path), *_unmatched(new, old, before.source.path)]
    only_before = {layer.name for layer in before.layers} - {c.before_name or c.name for c in changes}
    only_after = {layer.name for layer in after.layers} - {c.name for c in changes}
    return ReportDiff(
        before=before.source.path, after=after.source.path, layers=changes,
        only_before=tuple(layer.name for layer in before.layers if layer.name in only_before),
        only_after=tuple(layer.name for layer in after.layers if layer.name in only_after),
        summary={name: MetricChange(_number(means_before.get(name)), _number(means_after.get(name)))
                 for name in means_after.keys() | means_before.keys()},
        pairing=pairing, unpaired=tuple(unpaired) if pairing else (),
        alpha_rank_correlation=_rank_correlation(changes),
    )


def _unmatched(keyed: dict[str, LayerResult], other: dict[str, LayerResult], other_path: str) -> list[tuple[str, str]]:
    """The layers of one side whose key the other side lacks, with why."""
    return [(layer.name, (f"its GGUF name {key} is " if key != layer.name else "") + f"not in {other_path}")
            for key, layer in keyed.items() if key not in other]


def _pairing(before: Report, after: Report) -> tuple[str | None, dict[str, str], dict[str, str], dict[str, str]]:
    """How to pair two reports' layers: by name, or, for a GGUF file against another format, the
    other side's names under the gguf package's map for the GGUF's architecture."""
    gguf_before, gguf_after = (r.source.format.startswith("gguf") for r in (before, after))
    if gguf_before == gguf_after:
        return None, {}, {}, {}
    gguf_side, other = (before, after) if gguf_before else (after, before)
    architecture = gguf_side.source.architecture
    if architecture is None:
        return None, {}, {}, {}
    from htmp_cli.name_map import gguf_names

    mapped, unmapped = gguf_names((layer.name for layer in other.layers), architecture)
    pairing = f"{other.source.path}'s names mapped to llama.cpp's by the gguf package's map for {architecture}"
    return (pairing, mapped, {}, unmapped) if other is before else (pairing, {}, mapped, unmapped)


def _change(old: LayerResult, new: LayerResult) -> LayerChange:
    ks = None
    if old.eigenvalues is not None and new.eigenvalues is not None and old.status == new.status == "success":
        from htmp_cli.fits.randomize import ks_two_sample

        a, b = (np.sort(v[v > 0]) for v in (old.eigenvalues, new.eigenvalues))
        ks = ks_two_sample(a, b) if a.size and b.size else None
    return LayerChange(name=new.name, phase_before=_phase(old), phase_after=_phase(new),
                       status_before=old.status, status_after=new.status,
                       metrics={metric: MetricChange(_read(old, metric), _read(new, metric)) for metric in LAYER_METRICS},
                       before_name=old.name if old.name != new.name else None, ks_esd=ks)


def _rank_correlation(changes: tuple[LayerChange, ...]) -> float | None:
    pairs = [(c.metrics["alpha"].before, c.metrics["alpha"].after) for c in changes]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return float(rho) if math.isfinite(rho) else None


def diff_to_dict(diff: ReportDiff) -> dict[str, Any]:
    def change(c: MetricChange) -> dict[str, float | None]:
        return {"before": c.before, "after": c.after, "delta": c.delta, "relative": c.relative}

    return {
        "schema": "htmp.diff/2",
        "before": diff.before,
        "after": diff.after,
        "layers": [{"name": layer.name, "phase_before": layer.phase_before, "phase_after": layer.phase_after,
                    "phase_changed": layer.phase_changed, "status_before": layer.status_before,
                    "status_after": layer.status_after, "before_name": layer.before_name, "ks_esd": layer.ks_esd,
                    "metrics": {name: change(c) for name, c in layer.metrics.items()}} for layer in diff.layers],
        "only_before": list(diff.only_before),
        "only_after": list(diff.only_after),
        "pairing": diff.pairing,
        "unpaired": [{"name": name, "why": why} for name, why in diff.unpaired],
        "alpha_rank_correlation": diff.alpha_rank_correlation,
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
        row.update({"before_name": layer.before_name or layer.name, "ks_esd": layer.ks_esd})
        rows.append(row)
    return rows
