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


def _tail_log_sums(x: np.ndarray) -> np.ndarray:
    """sum_{j >= i} ln(x_j / x_i) for every i of sorted x, in O(n).

    Written as sum_{t > i} (n - t) ln(x_t / x_{t-1}): a suffix sum of non-negative terms, each
    step computed as log1p of a relative difference, so nothing cancels even for a narrow tail of
    large values (where sum ln x_j - n ln x_i would lose every digit).
    """
    n = x.size
    steps = np.log1p(np.diff(x) / x[:-1])
    sums = np.zeros(n)
    sums[:-1] = np.cumsum((steps * (n - np.arange(1, n)))[::-1])[::-1]
    return sums


def _alphas(sums: np.ndarray, candidates: np.ndarray, n: int, *, bias_corrected: bool) -> np.ndarray:
    """MLE of alpha for the tail at each candidate; inf where the tail is degenerate (all equal)."""
    m = (n - candidates).astype(np.float64)
    total = sums[candidates]
    with np.errstate(divide="ignore"):
        alphas = 1.0 + ((m - 1.0) if bias_corrected else m) / total
    alphas[total <= 0] = np.inf
    return alphas


def _ks_distances(x: np.ndarray, candidates: np.ndarray, alphas: np.ndarray, points: np.ndarray,
                  *, two_sided: bool) -> np.ndarray:
    """For each candidate i, max over tail points j in `points` (j >= i) of the KS gap at x_j.

    With every point this is the KS distance D; with a subset it is a lower bound of D. The gap
    at x_j is |P(x_j) - k/m| (k = j - i, m the tail size) against the lower step, or with
    `two_sided` the larger of the two sides of the step, which makes the max the true sup.
    Candidates must have finite alpha.
    """
    n = x.size
    out = np.full(candidates.size, -np.inf)
    order = np.argsort(candidates, kind="stable")
    per_block = max(1, _BLOCK_ELEMENTS // max(points.size, 1))
    for lo in range(0, candidates.size, per_block):
        rows = order[lo : lo + per_block]
        cand = candidates[rows]
        cols = points[points >= cand[0]]
        # ln(x_j / x_i) as log1p of the relative difference: exact to rounding even for a tail
        # one ulp wide, where a difference of logs would lose every digit. Points before the
        # candidate (masked below) are clamped to 0 so that expm1 cannot overflow.
        xmins = x[cand, None]
        log_ratio = np.log1p(np.maximum(x[None, cols] - xmins, 0.0) / xmins)
        m = (n - cand).astype(np.float64)[:, None]
        # Model CDF P(x) = 1 - (x / xmin)^(1 - alpha); -expm1 keeps digits where P is small.
        model_cdf = -np.expm1((1.0 - alphas[rows, None]) * log_ratio)
        below = (cols[None, :] - cand[:, None]) / m
        if two_sided:
            gap = np.maximum(model_cdf - below, below + 1.0 / m - model_cdf)
        else:
            gap = np.abs(model_cdf - below)
        gap[cols[None, :] < cand[:, None]] = -np.inf  # points before the candidate are not in its tail
        out[rows] = gap.max(axis=1)
    return out


def _best_candidate(x: np.ndarray, candidates: np.ndarray, alphas: np.ndarray) -> tuple[int, float]:
    """Position (in `candidates`) of the smallest true-sup D, ties to the smallest xmin, and that D.

    Exact, but cheaper than evaluating every candidate on every point: a lower bound of each D
    from a strided subset of points rules out most candidates, and only those whose bound does
    not exceed the best exact D found so far are evaluated in full.
    """
    n = x.size
    valid = np.flatnonzero(np.isfinite(alphas))
    all_points = np.arange(n)
    stride = max(1, int(np.sqrt(n) / 4))
    if stride == 1 or valid.size < 64:
        Ds = _ks_distances(x, candidates[valid], alphas[valid], all_points, two_sided=True)
        best = int(np.argmin(Ds))
        return int(valid[best]), float(Ds[best])
    sampled = np.unique(np.r_[np.arange(0, n, stride), n - 1])
    bounds = _ks_distances(x, candidates[valid], alphas[valid], sampled, two_sided=True)
    order = np.argsort(bounds, kind="stable")
    best_pos, best_D = -1, np.inf
    batch = 64
    for lo in range(0, order.size, batch):
        chunk = order[lo : lo + batch]
        chunk = chunk[bounds[chunk] <= best_D]
        if chunk.size == 0:
            break
        Ds = _ks_distances(x, candidates[valid[chunk]], alphas[valid[chunk]], all_points, two_sided=True)
        for pos, D in zip(valid[chunk], Ds):
            if D < best_D or (D == best_D and pos < best_pos):
                best_pos, best_D = int(pos), float(D)
    return best_pos, best_D


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
    alphas = _alphas(_tail_log_sums(x), candidates, n, bias_corrected=False)
    if not np.isfinite(alphas).any():
        return _failed(method, "every candidate tail is degenerate (all its eigenvalues equal)", n, candidates.size)
    best, D = _best_candidate(x, candidates, alphas)
    i = int(candidates[best])
    tail_size = n - i
    alpha = float(alphas[best])
    return PowerLawFit(
        status="success",
        method=method,
        alpha=alpha,
        sigma=float((alpha - 1.0) / np.sqrt(tail_size)),
        xmin=float(x[i]),
        xmax=float(x[-1]),
        D=D,
        tail_size=tail_size,
        n_candidates=int(candidates.size),
        n_fitted=n,
    )


def _ww_scan(x: np.ndarray, sums: np.ndarray, candidates: np.ndarray, *, bias_corrected: bool
             ) -> tuple[np.ndarray, np.ndarray]:
    """alpha and lower-step D of every candidate (D = inf where alpha is)."""
    alphas = _alphas(sums, candidates, x.size, bias_corrected=bias_corrected)
    Ds = np.full(candidates.size, np.inf)
    finite = np.isfinite(alphas)
    Ds[finite] = _ks_distances(x, candidates[finite], alphas[finite], np.arange(x.size), two_sided=False)
    return alphas, Ds


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
    candidates = np.arange(n - 1)
    tail_sizes = n - candidates
    small = n < WW_SMALL_N
    sums = _tail_log_sums(x)
    alphas, Ds = _ww_scan(x, sums, candidates, bias_corrected=small)
    degenerate = ~np.isfinite(alphas)
    if small:
        # Candidates with short or degenerate tails are skipped: alpha 0, D 1.
        skipped = (tail_sizes < WW_SMALL_N_MIN_TAIL) | degenerate | (sums[candidates] <= 1e-12)
        alphas[skipped] = 0.0
        Ds[skipped] = 1.0
        Ds[alphas <= 1.0] = 1.0
        if not (~skipped & (alphas > 1.0)).any():
            # 0.7.7 then fits the whole sample as one tail, whatever its size.
            whole_alpha, whole_D = _ww_scan(x, sums, candidates[:1], bias_corrected=True)
            alphas[0], Ds[0] = whole_alpha[0], whole_D[0]
            if not np.isfinite(alphas[0]) or sums[0] <= 1e-12:
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
        sigma=float((alpha - 1.0) / np.sqrt(n - best)),
        xmin=xmin,
        xmax=float(x[-1]),
        D=float(Ds[best]),
        tail_size=int(np.count_nonzero(x >= xmin)),
        n_candidates=int(candidates.size),
        n_fitted=n,
    )
