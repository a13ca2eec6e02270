"""Marchenko-Pastur bulk and spikes (math.md section 4).

For W (N x M, N >= M) with i.i.d. entries of variance sigma^2, the eigenvalues of W^T W / N follow
MP(sigma^2, gamma = M/N) on [l-, l+], l+- = sigma^2 (1 +- sqrt(gamma))^2. htmp's eigenvalues carry
no 1/N, so here `scale` = N sigma^2 is the mean of the bulk and the edges are in raw units.

The fit is a fixed point that spikes cannot drag: start from the median (matched to the MP median),
then repeat: edge l+ from the scale, spike threshold l+ + 2.02 s_TW (the 99% Tracy-Widom quantile),
scale = mean of the eigenvalues below it. A matrix whose bulk is not MP-like still gets a fit,
and says how poor it is: a heavy tail leaves the centre of the spectrum looking MP-like (small
`ks_bulk`) but puts many eigenvalues past the threshold, so `ks_all`, the KS distance of every
eigenvalue to the fitted law (the D_MP of the phase rules), is large.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

TW_99 = 2.02  # 99% quantile of Tracy-Widom (beta = 1): a 1% false-alarm rate per layer
# 99.9% quantile (beta = 1). Our simulation: 3.24 at n = 400 from 60,000 Dumitriu-Edelman tridiagonal
# draws, whose 99% quantile there (1.96) sits 0.06 below the asymptotic 2.02.
TW_999 = 3.27
Z_95 = 1.959964  # the normal 97.5% quantile: 95% intervals
_MAX_ITERATIONS = 100

# Fewer eigenvalues than this hold no bulk to fit (a matrix of one row has one).
MIN_EIGENVALUES = 4


@dataclass(frozen=True)
class MPFit:
    """A Marchenko-Pastur bulk fit. Numbers are None exactly when status is "failed"."""

    status: Literal["success", "failed"]
    gamma: float
    sigma2: float | None = None  # entry variance: scale / N
    scale: float | None = None  # N sigma^2, the bulk mean in raw eigenvalue units
    lambda_minus: float | None = None
    lambda_plus: float | None = None
    tw_scale: float | None = None  # Tracy-Widom scale at the edge, raw units
    spike_threshold: float | None = None  # lambda_plus + 2.02 tw_scale
    n_spikes: int | None = None
    n_bulk: int | None = None
    mp_softrank: float | None = None  # lambda_plus / lambda_max
    ks_bulk: float | None = None  # KS distance of the bulk (spikes left out) to the fitted law
    ks_all: float | None = None  # KS distance D_MP of every eigenvalue to the fitted law
    iterations: int = 0
    reason: str | None = None
    # sigma2's 95% interval for Gaussian-like entries: relative standard error sqrt(2 / (N n_bulk)),
    # the spread of a mean of N n_bulk squared Gaussian entries. Measured on Gaussian matrices (300
    # to 1000 x 100 to 300), the estimate's spread was 7-11% larger (the bulk's edge moves with it);
    # heavier-tailed entries widen it by sqrt((kurtosis - 1) / 2).
    sigma2_low: float | None = None
    sigma2_high: float | None = None


def mp_logpdf(x: np.ndarray, gamma: float) -> np.ndarray:
    """Log-density of Marchenko-Pastur with sigma^2 = 1 (mean 1), aspect ratio gamma <= 1."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = (1 - math.sqrt(gamma)) ** 2, (1 + math.sqrt(gamma)) ** 2
    inside = (x > lo) & (x < hi) & (x > 0)
    out = np.full(x.shape, -np.inf)
    xi = x[inside]
    out[inside] = 0.5 * np.log((hi - xi) * (xi - lo)) - np.log(2 * math.pi * gamma * xi)
    return out


def mp_cdf(x: np.ndarray, gamma: float) -> np.ndarray:
    """CDF of Marchenko-Pastur with sigma^2 = 1 (mean 1) and aspect ratio gamma <= 1."""
    grid, cumulative = _mp_cdf_table(float(gamma))
    return np.interp(np.asarray(x, dtype=np.float64), grid, cumulative, left=0.0, right=1.0)


# A layer asks for the table of its gamma five times (the bulk fit, its two KS distances, the HTMP
# fits' two); the layers of a model share a handful of shapes.
@lru_cache(maxsize=64)
def _mp_cdf_table(gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, CDF(x)) of Marchenko-Pastur(gamma) at 4097 points, read-only (they are shared)."""
    lo, hi = (1 - math.sqrt(gamma)) ** 2, (1 + math.sqrt(gamma)) ** 2
    # x = lo + (hi-lo)(1 - cos t)/2 turns the square-root edges into a smooth integrand in t.
    t = np.linspace(0.0, math.pi, 4097)
    grid = lo + (hi - lo) * (1 - np.cos(t)) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        integrand = np.where(grid > 0, ((hi - lo) ** 2 / 4) * np.sin(t) ** 2 / (2 * math.pi * gamma * grid), 0.0)
    if gamma == 1.0:
        integrand[0] = 2.0 / (2 * math.pi)  # limit of sin^2 t / x as t -> 0 when lo = 0 and hi = 4
    cumulative = np.r_[0.0, np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(t))]
    cumulative /= cumulative[-1]
    grid.flags.writeable = False
    cumulative.flags.writeable = False
    return grid, cumulative


def ks_distance(sorted_values: np.ndarray, model_cdf: np.ndarray) -> float:
    """Two-sided KS distance between the empirical CDF of sorted values and a model CDF at them."""
    n = sorted_values.size
    ranks = np.arange(n)
    return float(max(np.max(model_cdf - ranks / n), np.max((ranks + 1) / n - model_cdf)))


@lru_cache(maxsize=64)
def _mp_median(gamma: float) -> float:
    grid = np.linspace((1 - math.sqrt(gamma)) ** 2, (1 + math.sqrt(gamma)) ** 2, 4001)
    return float(np.interp(0.5, mp_cdf(grid, gamma), grid))


def _ks_all(values: np.ndarray, scale: float, gamma: float) -> float:
    # Eigenvalues beyond float64's range once divided by a tiny bulk scale (a spectrum whose bulk is
    # all but zero) are past the edge all the same: inf, where the CDF is 1.
    with np.errstate(over="ignore"):
        standardised = values / scale
    return ks_distance(standardised, mp_cdf(standardised, gamma))


def tracy_widom_scale(scale: float, gamma: float, N: int) -> float:
    """s_TW = sigma^2 (1 + sqrt(gamma))^(4/3) gamma^(-1/6) N^(-2/3), in raw units (times N)."""
    return scale * (1 + math.sqrt(gamma)) ** (4 / 3) * gamma ** (-1 / 6) * N ** (-2 / 3)


def fit_mp(eigenvalues: np.ndarray, N: int, M: int) -> MPFit:
    """Fit the MP bulk of the M eigenvalues of a matrix with N >= M."""
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    gamma = M / N
    if values.size < MIN_EIGENVALUES or values[-1] <= 0:
        return MPFit(status="failed", gamma=gamma, reason="too few non-zero eigenvalues for an MP fit")
    scale = float(np.median(values)) / _mp_median(gamma)
    if scale <= 0:
        scale = float(values.mean())
    iterations = 0
    for iterations in range(1, _MAX_ITERATIONS + 1):
        threshold = scale * (1 + math.sqrt(gamma)) ** 2 + TW_99 * tracy_widom_scale(scale, gamma, N)
        bulk = values[values <= threshold]
        new_scale = float(bulk.mean()) if bulk.size else scale
        if new_scale <= 0:  # what lies below the edge is all zeros: a rank-deficient matrix, no bulk
            return MPFit(status="failed", gamma=gamma, reason="no MP bulk: the eigenvalues below the edge are all zero")
        converged = abs(new_scale - scale) <= 1e-12 * scale
        scale = new_scale
        if converged:
            break
    lambda_plus = scale * (1 + math.sqrt(gamma)) ** 2
    tw = tracy_widom_scale(scale, gamma, N)
    threshold = lambda_plus + TW_99 * tw
    bulk = values[values <= threshold]
    relative_error = math.sqrt(2.0 / (N * max(bulk.size, 1)))
    return MPFit(
        status="success",
        gamma=gamma,
        sigma2=scale / N,
        scale=scale,
        lambda_minus=scale * (1 - math.sqrt(gamma)) ** 2,
        lambda_plus=lambda_plus,
        tw_scale=tw,
        spike_threshold=threshold,
        n_spikes=int(values.size - bulk.size),
        n_bulk=int(bulk.size),
        mp_softrank=lambda_plus / float(values[-1]),
        ks_bulk=ks_distance(bulk / scale, mp_cdf(bulk / scale, gamma)),
        ks_all=_ks_all(values, scale, gamma),
        iterations=iterations,
        sigma2_low=scale / N * max(1.0 - Z_95 * relative_error, 0.0),
        sigma2_high=scale / N * (1.0 + Z_95 * relative_error),
    )
