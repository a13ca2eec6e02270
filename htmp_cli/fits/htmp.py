"""The high-temperature Marchenko-Pastur (HTMP) law of Hodgkinson, Wang and Mahoney, and its fit.

The standardised law (mean exactly 1) for aspect ratio gamma = M/N <= 1 and eigenvalue-repulsion
parameter kappa > 0, with c = kappa/2, delta = kappa(1-gamma)/(2 gamma), s = c + delta:

    rho(x) = s (s x)^(delta-1) exp(-s x) / (Gamma(c+1) Gamma(c+delta) |U(c, 1-delta, -s x)|^2)

U is Tricomi's function on its branch cut, evaluated through Kummer's M by the connection formula
U(c, 1-d, -y) = A + B e^{-i pi d}, A = Gamma(d)/Gamma(c+d) M(c, 1-d, -y),
B = Gamma(-d)/Gamma(c) y^d M(c+d, 1+d, -y), so |U|^2 = A^2 + B^2 + 2 A B cos(pi d), with A and B
carried in log space. This float64 path agrees with mpmath to about 1e-12 for kappa <= 100 and
delta <= 250 (tested); above kappa = 100 its terms lose accuracy, and there the law is Marchenko-Pastur
to 0.005 in CDF: the functions switch to the MP law of the same mean and variance, and the fit stops at
kappa = 100 and flags it. At integer delta Gamma(+-d) have poles that cancel: the path
averages delta -+ 1e-5 there. The CDF is (2/(pi kappa)) times the unwrapped phase of U.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
from scipy import optimize, special

from htmp_cli.fits.mp import ks_distance, mp_cdf, mp_logpdf

KAPPA_MIN = 1e-3
KAPPA_MAX = 100.0  # upper end of the validated float64 path; beyond it the law is MP-like
_INTEGER_DELTA_GAP = 1e-3  # rounding grows as 1/gap^2, the extrapolated bias as gap^4
DELTA_MAX = 250.0  # the float64 path agrees with mpmath to ~1e-11 up to here (tested); not beyond
_FIT_GRID = 128  # points of the log-density grid the likelihood interpolates
_TINY = 1e-150  # below it the float64 path loses its terms; the density is its power law there


def shape_parameters(kappa: float, gamma: float) -> tuple[float, float, float]:
    """(c, delta, s) of the standardised law."""
    c = kappa / 2.0
    delta = kappa * (1.0 - gamma) / (2.0 * gamma)
    return c, delta, c + delta


def _u_parts(c: float, d: float, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log scale L and scaled real parts a, b with U(c, 1-d, -y - i0) = e^L (a + b e^{-i pi d})."""
    m1 = special.hyp1f1(c, 1.0 - d, -y)
    m2 = special.hyp1f1(c + d, 1.0 + d, -y)
    with np.errstate(divide="ignore"):
        log_a = special.gammaln(d) - special.gammaln(c + d) + np.log(np.abs(m1))
        log_b = special.gammaln(-d) - special.gammaln(c) + d * np.log(y) + np.log(np.abs(m2))
    scale = np.maximum(log_a, log_b)
    a = special.gammasgn(d) * np.sign(m1) * np.exp(log_a - scale)
    b = special.gammasgn(-d) * np.sign(m2) * np.exp(log_b - scale)
    return scale, a, b


def _logpdf_cd(x: np.ndarray, c: float, d: float) -> np.ndarray:
    s = c + d
    y = s * x
    scale, a, b = _u_parts(c, d, y)
    modulus = a * a + b * b + 2.0 * a * b * math.cos(math.pi * d)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (math.log(s) + (d - 1.0) * np.log(y) - y - special.gammaln(c + 1.0) - special.gammaln(c + d)
                - 2.0 * scale - np.log(modulus))


def _at_both_sides(fn, x: np.ndarray, c: float, d: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    """fn(x, c, d), except within the gap of an integer delta (0 included: gamma = 1).

    There Gamma(+-d) and Kummer's M have poles that cancel in the law, and the float64 terms lose
    digits as 1/(d - n)^2. The law is analytic in delta, so it is taken from the symmetric means at
    n -+ gap and n -+ 2 gap (Richardson: error O(gap^4)), plus the slope times the offset from n.
    """
    n = round(d)
    # The step must also be small beside c, or the extrapolation spans a visibly different law.
    h = min(_INTEGER_DELTA_GAP, c / 100.0)
    if abs(d - n) >= h:
        return fn(x, c, d)
    below, above = fn(x, c, n - h), fn(x, c, n + h)
    wide = 0.5 * (fn(x, c, n - 2 * h) + fn(x, c, n + 2 * h))
    centre = (4.0 * 0.5 * (below + above) - wide) / 3.0
    return centre + (d - n) * (above - below) / (2 * h)


def logpdf(x: np.ndarray, kappa: float, gamma: float) -> np.ndarray:
    """Log-density of the standardised HTMP law; -inf where x <= 0, never NaN.

    Defined for delta <= DELTA_MAX, where the float64 path is validated against mpmath; beyond it
    a ValueError says so (fits never go there; `logpdf_mpmath` is the slow exact route). Where float64 under- or overflows (x below 1e-150,
    or far out in the Gamma-like upper tail) the density continues as its asymptotic power law at 0
    (x^(delta-1)) or its tail x^(delta-1+kappa) e^(-s x), anchored at the last finite value.
    """
    x = np.asarray(x, dtype=np.float64)
    _check(kappa, gamma)
    if kappa > KAPPA_MAX:
        return mp_logpdf(x, _mp_equivalent_gamma(kappa, gamma))
    out = np.full(x.shape, -np.inf)
    c, d, s = shape_parameters(kappa, gamma)
    positive = x > 0
    if d > DELTA_MAX:
        raise ValueError(f"HTMP float64 path is validated for delta <= {DELTA_MAX:g}; kappa={kappa:g}, "
                         f"gamma={gamma:g} give delta={d:g}")
    regular = x >= _TINY
    values = _at_both_sides(_logpdf_cd, x[regular], c, d)
    broken = ~np.isfinite(values)
    if broken.any():
        xr = x[regular]
        finite = np.flatnonzero(~broken)
        for i in np.flatnonzero(broken):
            below = finite[xr[finite] < xr[i]]
            if below.size:
                j = below[np.argmax(xr[below])]
                values[i] = values[j] + (d - 1.0 + kappa) * math.log(xr[i] / xr[j]) - s * (xr[i] - xr[j])
            else:
                values[i] = -np.inf
    out[regular] = values
    tiny = positive & ~regular
    if tiny.any():
        anchor = _at_both_sides(_logpdf_cd, np.array([_TINY]), c, d)[0]
        out[tiny] = anchor + (d - 1.0) * (np.log(x[tiny]) - math.log(_TINY))
    return out


def pdf(x: np.ndarray, kappa: float, gamma: float) -> np.ndarray:
    return np.exp(logpdf(x, kappa, gamma))


def _phase_cd(x: np.ndarray, c: float, d: float) -> np.ndarray:
    """arg U(c, 1-d, -(c+d) x - i0), wrapped to (-pi, pi]."""
    _, a, b = _u_parts(c, d, (c + d) * x)
    return np.arctan2(-b * math.sin(math.pi * d), a + b * math.cos(math.pi * d))


def _cdf_cd(x: np.ndarray, c: float, d: float, exact_points: bool = True) -> np.ndarray:
    """CDF at sorted positive x: 1 / (pi c) times the unwrapped phase of U from 0 to x.

    The phase is followed on a grid refined until it moves by less than pi/2 between neighbours.
    With `exact_points` the grid holds every x; otherwise x is interpolated between 1,024 grid
    points (error about 1e-5: ample for a KS distance, and much cheaper for thousands of points).
    """
    top = float(x[-1])
    base = np.r_[np.geomspace(min(float(x[0]), 1e-12), top, 512), np.linspace(0, top, 512)[1:]]
    grid = np.unique(np.r_[base, x] if exact_points else base)
    theta = _phase_cd(grid, c, d)
    for _ in range(12):
        steps = np.abs(np.angle(np.exp(1j * np.diff(theta))))
        steps[~np.isfinite(steps)] = 0.0
        coarse = np.flatnonzero(steps > math.pi / 2)
        if coarse.size == 0:
            break
        grid = np.unique(np.r_[grid, 0.5 * (grid[coarse] + grid[coarse + 1])])
        theta = _phase_cd(grid, c, d)
    # Far out in the upper tail the float64 terms overflow: the law has all but nothing left there.
    finite = np.isfinite(theta)
    unwrapped = np.unwrap(np.r_[0.0, theta[finite]])[1:]
    return np.interp(x, grid[finite], np.abs(unwrapped) / (math.pi * c), right=1.0)


def cdf(x: np.ndarray, kappa: float, gamma: float, exact_points: bool = True) -> np.ndarray:
    """CDF of the standardised law: (2 / (pi kappa)) times the unwrapped phase change of U from 0 to x.

    Below x = 1e-150 it continues as the power law of the density at 0, F ~ x^delta. Defined for
    delta <= DELTA_MAX, like `logpdf`.
    """
    x = np.asarray(x, dtype=np.float64)
    _check(kappa, gamma)
    if kappa > KAPPA_MAX:
        return mp_cdf(x, _mp_equivalent_gamma(kappa, gamma))
    out = np.zeros(x.shape)
    regular = x >= _TINY
    c, d, _ = shape_parameters(kappa, gamma)
    if d > DELTA_MAX:
        raise ValueError(f"HTMP float64 path is validated for delta <= {DELTA_MAX:g}; got delta={d:g}")
    if regular.any():
        order = np.argsort(x[regular])
        values = np.empty(order.size)
        evaluate = partial(_cdf_cd, exact_points=exact_points)
        values[order] = np.clip(_at_both_sides(evaluate, x[regular][order], c, d), 0.0, 1.0)
        out[regular] = values
    tiny = (x > 0) & ~regular
    if tiny.any():
        anchor = float(np.clip(_at_both_sides(_cdf_cd, np.array([_TINY]), c, d), 0.0, 1.0)[0])
        out[tiny] = anchor * (x[tiny] / _TINY) ** max(d, 0.0)
    return out


def inverse_logpdf(z: np.ndarray, kappa: float, gamma: float) -> np.ndarray:
    """Log-density of 1/X for X standardised HTMP: its upper tail is a power law of exponent 1 + delta."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return logpdf(1.0 / z, kappa, gamma) - 2.0 * np.log(z)


def inverse_cdf(z: np.ndarray, kappa: float, gamma: float) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 1.0 - cdf(1.0 / z, kappa, gamma)


def _mp_equivalent_gamma(kappa: float, gamma: float) -> float:
    """Above KAPPA_MAX the law is MP to 0.005 in CDF; the MP with the same mean (1) and variance
    gamma (1 + 2/kappa) has aspect ratio gamma (1 + 2/kappa), capped at 1."""
    return min(1.0, gamma * (1.0 + 2.0 / kappa))


def _check(kappa: float, gamma: float) -> None:
    if not (kappa > 0 and 0 < gamma <= 1):
        raise ValueError(f"HTMP needs kappa > 0 and 0 < gamma <= 1, got kappa={kappa}, gamma={gamma}")


def logpdf_mpmath(x: float, kappa: float, gamma: float, dps: int = 40) -> float:
    """Reference log-density with mpmath's arbitrary-precision hyperu (slow: milliseconds a point)."""
    import mpmath

    with mpmath.workdps(dps):
        c, d, s = (mpmath.mpf(v) for v in shape_parameters(kappa, gamma))
        xm = mpmath.mpf(x)
        u = mpmath.hyperu(c, 1 - d, -s * xm)
        value = (mpmath.log(s) + (d - 1) * mpmath.log(s * xm) - s * xm - mpmath.loggamma(c + 1)
                 - mpmath.loggamma(c + d) - 2 * mpmath.log(abs(u)))
        return float(value)


@dataclass(frozen=True)
class HTMPFit:
    """An HTMP fit in one orientation. Numbers are None exactly when status is "failed"."""

    status: Literal["success", "failed"]
    orientation: str  # "direct": lambda/scale ~ HTMP; "inverse": scale/lambda ~ HTMP
    gamma: float
    kappa: float | None = None
    delta: float | None = None
    scale: float | None = None  # raw units: mean lambda (direct) or 1 / mean(1/lambda) (inverse)
    tail_exponent: float | None = None  # direct: density ~ x^(delta-1) at 0; inverse: alpha = 1 + delta
    ks_htmp: float | None = None
    ks_mp: float | None = None
    at_bound: str | None = None  # "lower" or "upper" when kappa sits at a bound of its range
    n_fitted: int = 0
    reason: str | None = None


def fit_htmp(eigenvalues: np.ndarray, gamma: float, orientation: str = "direct") -> HTMPFit:
    """Maximum-likelihood kappa over log kappa in [KAPPA_MIN, KAPPA_MAX], scale = the exact mean.

    The likelihood interpolates the log-density on a grid of 128 log-spaced points (exact for power
    laws, and checked against the pointwise likelihood in the tests); the optimiser is bounded Brent.
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    values = np.sort(values[values > 0])
    n = values.size
    gamma = min(float(gamma), 1.0)
    if n < 10:
        return HTMPFit(status="failed", orientation=orientation, gamma=gamma, n_fitted=n,
                       reason=f"{n} non-zero eigenvalues, too few for an HTMP fit")
    if orientation == "inverse":
        data = np.sort(1.0 / values)
    else:
        data = values
    scale = float(data.mean())
    x = data / scale
    if x[-1] <= x[0] * (1 + 1e-12):
        return HTMPFit(status="failed", orientation=orientation, gamma=gamma, n_fitted=n,
                       reason="all eigenvalues are equal")
    log_x = np.log(x)
    grid = np.linspace(log_x[0], log_x[-1], _FIT_GRID)

    def negative_loglik(log_kappa: float) -> float:
        dens = logpdf(np.exp(grid), math.exp(log_kappa), gamma)
        if not np.isfinite(dens).all():
            return math.inf
        return -float(np.interp(log_x, grid, dens).sum())

    # The float64 path is validated up to delta = DELTA_MAX, i.e. kappa = 2 gamma DELTA_MAX / (1 - gamma).
    kappa_max = KAPPA_MAX if gamma >= 1.0 else min(KAPPA_MAX, 2.0 * gamma * DELTA_MAX / (1.0 - gamma))
    bounds = (math.log(KAPPA_MIN), math.log(kappa_max))
    result = optimize.minimize_scalar(negative_loglik, bounds=bounds, method="bounded",
                                      options={"xatol": 1e-3})
    if not np.isfinite(result.fun):
        return HTMPFit(status="failed", orientation=orientation, gamma=gamma, n_fitted=n,
                       reason="the likelihood is not finite anywhere on the kappa range")
    kappa = math.exp(result.x)
    at_bound = None
    if result.x - bounds[0] < 1e-3:
        at_bound = "lower"
    elif bounds[1] - result.x < 1e-3:
        at_bound = "upper"
    _, delta, _ = shape_parameters(kappa, gamma)
    ks = ks_distance(x, cdf(x, kappa, gamma, exact_points=False))
    # Marchenko-Pastur with sigma^2 = 1 is the moment fit to the mean-one eigenvalues; it is the
    # same comparison in both orientations (KS is invariant under the reciprocal).
    mean_one = values / values.mean()
    ks_mp = ks_distance(mean_one, mp_cdf(mean_one, gamma))
    return HTMPFit(
        status="success",
        orientation=orientation,
        gamma=gamma,
        kappa=kappa,
        delta=delta,
        scale=scale if orientation == "direct" else 1.0 / scale,
        tail_exponent=(delta - 1.0) if orientation == "direct" else 1.0 + delta,
        ks_htmp=ks,
        ks_mp=ks_mp,
        at_bound=at_bound,
        n_fitted=n,
    )
