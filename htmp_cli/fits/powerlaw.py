"""Power-law fit of the upper tail of an eigenvalue spectrum (Clauset, Shalizi, Newman 2009).

For a candidate xmin with n points x >= xmin, the MLE is alpha = 1 + n / sum ln(x_i / xmin), with
standard error (alpha - 1) / sqrt(n); xmin is the candidate whose tail has the smallest KS distance
to the fitted law. Every candidate is evaluated at once, in blocks of candidates x tail points.

`fit_power_law` is the plain CSN fit. `fit_power_law_ww` reproduces WeightWatcher 0.7.7's default
fit exactly, for comparison with published numbers: its own eigenvalue cut, candidate set, one-sided
KS distance and small-sample variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

# Candidates x tail points evaluated per block: bounds the temporary arrays to ~64 MB.
_BLOCK_ELEMENTS = 2**23
# WeightWatcher 0.7.7 constants (EVALS_THRESH, SMALL_N_CUTOFF, k_min of its small-N fit).
WW_EVALS_THRESHOLD = 1e-5
WW_SMALL_N = 20
WW_SMALL_N_MIN_TAIL = 8


@dataclass(frozen=True)
class PowerLawFit:
    """A power-law tail fit. Numbers are None exactly when status is "failed"."""

    status: Literal["success", "failed"]
    method: str
    alpha: float | None = None
    sigma: float | None = None  # standard error of alpha
    xmin: float | None = None
    xmax: float | None = None
    D: float | None = None  # KS distance of the tail to the fitted law
    tail_size: int | None = None
    n_candidates: int = 0
    n_fitted: int = 0  # eigenvalues that entered the fit
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"


def _failed(method: str, reason: str, n_fitted: int, n_candidates: int = 0) -> PowerLawFit:
    return PowerLawFit(status="failed", method=method, reason=reason, n_fitted=n_fitted, n_candidates=n_candidates)


def _scan_candidates(
    log_x: np.ndarray, candidates: np.ndarray, *, bias_corrected: bool, two_sided: bool
) -> tuple[np.ndarray, np.ndarray]:
    """alpha and KS distance D of the tail starting at each candidate index of sorted log_x.

    Sums of ln(x_j / xmin) are taken over the (candidate x tail) block itself rather than from
    suffix sums of ln x, which would cancel catastrophically for narrow tails of large values.
    A candidate whose tail is degenerate (all points equal) gets alpha = inf and D = inf.
    """
    n = log_x.size
    alphas = np.empty(candidates.size)
    Ds = np.empty(candidates.size)
    per_block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for lo in range(0, candidates.size, per_block):
        cand = candidates[lo : lo + per_block]
        first = int(cand[0])
        tail_idx = np.arange(first, n)
        in_tail = tail_idx[None, :] >= cand[:, None]
        log_ratio = np.where(in_tail, log_x[None, first:] - log_x[cand, None], 0.0)
        m = (n - cand).astype(np.float64)
        total = log_ratio.sum(axis=1)
        with np.errstate(divide="ignore"):
            alpha = 1.0 + ((m - 1.0) if bias_corrected else m) / total
        degenerate = total <= 0
        alpha[degenerate] = np.inf
        # Model CDF P(x) = 1 - (x / xmin)^(1 - alpha); -expm1 keeps digits where P is small.
        with np.errstate(invalid="ignore", over="ignore"):
            model_cdf = -np.expm1((1.0 - alpha[:, None]) * log_ratio)
        rank = (tail_idx[None, :] - cand[:, None]).astype(np.float64)
        below = rank / m[:, None]
        if two_sided:
            # The sup of |S_n - P| over x: each step of S_n is checked on both of its sides.
            gap = np.maximum(model_cdf - below, below + 1.0 / m[:, None] - model_cdf)
        else:
            gap = np.abs(model_cdf - below)
        gap = np.where(in_tail, gap, -np.inf)
        D = gap.max(axis=1)
        D[degenerate] = np.inf
        alphas[lo : lo + per_block] = alpha
        Ds[lo : lo + per_block] = D
    return alphas, Ds


def fit_power_law(eigenvalues: np.ndarray, min_tail: int = 10) -> PowerLawFit:
    """CSN fit of the positive eigenvalues. Candidates: distinct values with >= min_tail points at or above."""
    method = "csn"
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    x = x[x > 0]
    n = x.size
    if n < min_tail:
        return _failed(method, f"{n} non-zero eigenvalues, fewer than min_tail={min_tail}", n)
    distinct_start = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
    candidates = distinct_start[n - distinct_start >= min_tail]
    log_x = np.log(x)
    alphas, Ds = _scan_candidates(log_x, candidates, bias_corrected=False, two_sided=True)
    if not np.isfinite(Ds).any():
        return _failed(method, "every candidate tail is degenerate (all its eigenvalues equal)", n, candidates.size)
    best = int(np.argmin(Ds))  # ties: the smallest xmin, as the powerlaw package does
    i = int(candidates[best])
    tail_size = n - i
    alpha = float(alphas[best])
    return PowerLawFit(
        status="success",
        method=method,
        alpha=alpha,
        sigma=(alpha - 1.0) / np.sqrt(tail_size),
        xmin=float(x[i]),
        xmax=float(x[-1]),
        D=float(Ds[best]),
        tail_size=tail_size,
        n_candidates=int(candidates.size),
        n_fitted=n,
    )


def fit_power_law_ww(eigenvalues: np.ndarray) -> PowerLawFit:
    """WeightWatcher 0.7.7's default fit (its `WWFit`), reproduced.

    Eigenvalues <= 1e-5 are dropped; every sorted value but the last is a candidate, duplicates
    included; D is measured against the lower step of the empirical CDF only, and is 1 when
    alpha <= 1. Below 20 eigenvalues the bias-corrected alpha = 1 + (n-1)/sum ln(x/xmin) is used on
    tails of at least 8; as in 0.7.7, xmin is then still the candidate of smallest D (its
    D - 0.868/sqrt(n) objective is computed but overridden), and skipped candidates keep D = 1.
    """
    method = "ww"
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    x = x[x > WW_EVALS_THRESHOLD]
    n = x.size
    if n < 2:
        return _failed(method, f"{n} eigenvalues above {WW_EVALS_THRESHOLD:g}, too few to fit", n)
    log_x = np.log(x)
    candidates = np.arange(n - 1)
    tail_sizes = n - candidates
    small = n < WW_SMALL_N
    alphas, Ds = _scan_candidates(log_x, candidates, bias_corrected=small, two_sided=False)
    degenerate = ~np.isfinite(alphas)
    if small:
        # Candidates with short or degenerate tails are skipped: alpha 0, D 1.
        skipped = (tail_sizes < WW_SMALL_N_MIN_TAIL) | degenerate
        alphas[skipped] = 0.0
        Ds[skipped] = 1.0
        Ds[alphas <= 1.0] = 1.0
        if not (~skipped & (alphas > 1.0)).any():
            # 0.7.7 then fits the whole sample as one tail, whatever its size.
            whole_alpha, whole_D = _scan_candidates(log_x, candidates[:1], bias_corrected=True, two_sided=False)
            alphas[0], Ds[0] = whole_alpha[0], whole_D[0]
            if not np.isfinite(alphas[0]):
                alphas[0], Ds[0] = 1.0, 1.0
    else:
        # A tail of equal values gives alpha = inf, a model CDF of 0 and so D = (m-1)/m.
        Ds[degenerate] = (tail_sizes[degenerate] - 1) / tail_sizes[degenerate]
        Ds[alphas <= 1.0] = 1.0
    best = int(np.argmin(Ds))
    alpha = float(alphas[best])
    if not np.isfinite(alpha) or alpha <= 1.0:
        return _failed(method, f"the best candidate has alpha {alpha:g}, not a power law", n, candidates.size)
    xmin = float(x[best])
    return PowerLawFit(
        status="success",
        method=method,
        alpha=alpha,
        sigma=(alpha - 1.0) / np.sqrt(n - best),
        xmin=xmin,
        xmax=float(x[-1]),
        D=float(Ds[best]),
        tail_size=int(np.count_nonzero(x >= xmin)),
        n_candidates=int(candidates.size),
        n_fitted=n,
    )
