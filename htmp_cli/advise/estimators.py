"""The alpha estimators the papers' allocations were computed with (`--estimator`).

The rules map alphas into settings, so the settings depend on which alpha: the papers' scripts
do not use htmp's Clauset-Shalizi-Newman fit. All are the power-law MLE (Hill) alpha
1 + n / sum ln(lambda_i / xmin) over the n eigenvalues at or above xmin; they differ in xmin.

- "csn": htmp's own fit (the report's alpha): xmin by the smallest KS distance over every
  candidate with at least --min-tail points above it.
- "median": TempBalance and AlphaDecay: xmin is the median eigenvalue (index N // 2 of the sorted
  spectrum, zeros included, as their `pl_fitting='median'`).
- "peak": AlphaPruning and AlphaLoRA (`xmin_peak`): the peak of a 100-bin histogram of log10
  lambda; xmin is the candidate in [0.95, 1.5] x the peak bin's lower edge whose tail has the
  smallest KS distance (theirs: the gap to the empirical CDF's left limit). The authors' code
  compares the window's lower end in log10 units with eigenvalues, which leaves the window open
  below; htmp keeps the window the papers describe.
- "farms": the FARMS fit of the pooled ESD of square windows (AlphaQ's sub-block alpha); needs
  the analysis made with --farms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from htmp_cli.results import LayerResult

ESTIMATORS = ("csn", "median", "peak", "farms")
PEAK_BINS = 100
PEAK_WINDOW = (0.95, 1.5)
_BLOCK_ELEMENTS = 2**22  # candidates x tail points per block of the peak search


@dataclass(frozen=True)
class AlphaEstimate:
    """One layer's alpha by one estimator; alpha is None exactly when `reason` says why."""

    alpha: float | None
    xmin: float | None = None
    tail_size: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.alpha is not None


def _no_alpha(reason: str) -> AlphaEstimate:
    return AlphaEstimate(alpha=None, reason=reason)


def hill_alpha(tail: np.ndarray) -> float | None:
    """The MLE of alpha for a sorted tail whose first value is xmin; None when the tail is degenerate."""
    logs = np.log(tail / tail[0])
    total = float(logs.sum())
    return 1.0 + tail.size / total if total > 0 and np.isfinite(total) else None


def median_alpha(eigenvalues: np.ndarray, n_zero: int = 0) -> AlphaEstimate:
    """TempBalance's alpha: xmin the eigenvalue at index N // 2 of the ascending spectrum."""
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    start = values.size // 2
    if values.size < 2:
        return _no_alpha(f"{values.size} eigenvalue(s): no tail above a median")
    if start < n_zero or values[start] <= 0:
        return _no_alpha(f"the median eigenvalue is numerically zero ({n_zero} of {values.size} are)")
    tail = values[start:]
    alpha = hill_alpha(tail)
    if alpha is None:
        return _no_alpha("the eigenvalues above the median are all equal: no tail to fit")
    return AlphaEstimate(alpha=alpha, xmin=float(tail[0]), tail_size=int(tail.size))


def peak_alpha(eigenvalues: np.ndarray, n_zero: int = 0, bins: int = PEAK_BINS,
               window: tuple[float, float] = PEAK_WINDOW) -> AlphaEstimate:
    """AlphaPruning's alpha: xmin searched near the peak of the log10 ESD's histogram, by KS."""
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))[n_zero:]
    values = values[values > 0]
    if values.size < 2:
        return _no_alpha(f"{values.size} non-zero eigenvalue(s): no tail to fit")
    logs = np.log10(values)
    counts, edges = np.histogram(logs, bins=bins, range=(float(logs[0]), float(logs[-1])))
    peak = 10.0 ** float(edges[int(np.argmax(counts))])
    low, high = window[0] * peak, window[1] * peak
    candidates = np.flatnonzero((values >= low) & (values <= high))
    candidates = candidates[candidates < values.size - 1]  # the largest value alone is no tail
    if candidates.size == 0:
        return _no_alpha(f"no eigenvalue in [{low:.4g}, {high:.4g}] around the ESD's peak to start a tail")
    n = values.size
    log_values = np.log(values)
    suffix = np.cumsum(log_values[::-1])[::-1]  # sum_{j >= i} ln lambda_j
    sizes = (n - candidates).astype(np.float64)
    totals = suffix[candidates] - sizes * log_values[candidates]
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = np.where(totals > 0, 1.0 + sizes / totals, np.nan)
    distances = np.full(candidates.size, np.inf)
    per_block = max(1, _BLOCK_ELEMENTS // n)
    for first in range(0, candidates.size, per_block):
        block = slice(first, first + per_block)
        distances[block] = _left_gaps(values, candidates[block], alphas[block])
    valid = np.isfinite(distances) & (alphas > 1)
    if not valid.any():
        return _no_alpha("every tail around the ESD's peak is degenerate (equal eigenvalues)")
    best = int(np.argmin(np.where(valid, distances, np.inf)))
    start = int(candidates[best])
    return AlphaEstimate(alpha=float(alphas[best]), xmin=float(values[start]), tail_size=int(n - start))


def _left_gaps(values: np.ndarray, candidates: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """max_j |1 - (x_j / xmin)^(1 - alpha) - j / n| over each candidate's tail (j = 0 .. n - 1)."""
    n_total = values.size
    longest = n_total - int(candidates.min())
    offsets = np.arange(longest)
    index = candidates[:, None] + offsets[None, :]
    inside = index < n_total
    tail = values[np.minimum(index, n_total - 1)]
    xmin = values[candidates][:, None]
    sizes = (n_total - candidates)[:, None].astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        fitted = 1.0 - (tail / xmin) ** (1.0 - alphas[:, None])
        gaps = np.abs(fitted - offsets[None, :] / sizes)
    gaps = np.where(inside, gaps, 0.0)
    result = gaps.max(axis=1)
    result[~np.isfinite(alphas)] = np.inf
    return result


def layer_alpha(layer: LayerResult, estimator: str) -> AlphaEstimate:
    """`layer`'s alpha by `estimator`; without one, the reason (a failed fit, no eigenvalues kept)."""
    if layer.status != "success":
        return _no_alpha(f"no spectrum: {layer.reason}")
    if estimator == "csn":
        fit = layer.power_law
        if fit is None or not fit.ok:
            return _no_alpha(f"power-law fit failed: {fit.reason if fit is not None else 'not fitted'}")
        return AlphaEstimate(alpha=fit.alpha, xmin=fit.xmin, tail_size=fit.tail_size)
    if estimator == "farms":
        if layer.farms is None:
            return _no_alpha("no FARMS fit: the analysis was made without --farms")
        fit = layer.farms.power_law
        if not fit.ok:
            return _no_alpha(f"FARMS power-law fit failed: {fit.reason}")
        return AlphaEstimate(alpha=fit.alpha, xmin=fit.xmin, tail_size=fit.tail_size)
    if layer.eigenvalues is None:
        return _no_alpha(f"the {estimator!r} estimator needs the eigenvalues, which a saved report does not keep: "
                         "advise from the checkpoint")
    if estimator == "median":
        return median_alpha(layer.eigenvalues, layer.n_zero)
    if estimator == "peak":
        return peak_alpha(layer.eigenvalues, layer.n_zero)
    raise ValueError(f"unknown estimator {estimator!r}")
