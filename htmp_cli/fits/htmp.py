"""The high-temperature Marchenko-Pastur (HTMP) law of Hodgkinson, Wang and Mahoney, and its fit.

The standardised law (mean exactly 1) for aspect ratio gamma = M/N <= 1 and eigenvalue-repulsion
parameter kappa > 0, with c = kappa/2, delta = kappa(1-gamma)/(2 gamma), s = c + delta:

    rho(x) = s (s x)^(delta-1) exp(-s x) / (Gamma(c+1) Gamma(c+delta) |U(c, 1-delta, -s x)|^2)

U is Tricomi's function on its branch cut, evaluated through Kummer's M by the connection formula
U(c, 1-d, -y) = A + B e^{-i pi d}, A = Gamma(d)/Gamma(c+d) M(c, 1-d, -y),
B = Gamma(-d)/Gamma(c) y^d M(c+d, 1+d, -y), so |U|^2 = A^2 + B^2 + 2 A B cos(pi d), with A and B
carried in log space. This float64 path agrees with mpmath to about 1e-12 for kappa <= 100 and
delta <= 250 (tested). Above delta = 250 its terms lose their digits, and U comes instead from an
integral along a saddle-point contour (`htmp_cli.fits.contour`), within 1e-12 of mpmath up to
delta = 1e5 (tested). Above kappa = 100 its terms lose accuracy, and there the law is Marchenko-Pastur
to 0.005 in CDF: the functions switch to the MP law of the same mean and variance, and the fit stops at
kappa = 100 and flags it. At integer delta Gamma(+-d) have poles that cancel: the path
extrapolates from delta -+ h and -+ 2h there, h = min(1e-3, kappa / 200) (the fit, for speed, averages -+ h
alone). The CDF is (2/(pi kappa)) times the unwrapped phase of U.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal

import numpy as np

from htmp_cli.fits import contour
from htmp_cli.fits.mp import Z_95, ks_distance, mp_cdf, mp_logpdf

# scipy.special (0.3 s to import: it loads numpy's f2py, testing, ma and random too) is imported by
# the functions that evaluate the law; importing this module costs nothing until a law is evaluated.

KAPPA_MIN = 1e-3
KAPPA_MAX = 100.0  # upper end of the validated float64 path; beyond it the law is MP-like
_INTEGER_DELTA_GAP = 1e-3  # rounding grows as 1/gap^2, the extrapolated bias as gap^4
DELTA_CONTOUR = 250.0  # Kummer's M agrees with mpmath to ~1e-11 up to here (tested); the contour above
DELTA_MAX = 1e5  # the contour agrees with mpmath to ~1e-12 up to here (tested); not checked beyond
# Points of the log-density grid the likelihood interpolates (cubically). On MiniLM-L6's 78 fits
# and Dumitriu-Edelman samples, 64 points came within 2.6% (samples: 0.07%) of the pointwise maximum,
# where linear interpolation on 128 points came within 8.4% (0.4%), at twice the cost.
_FIT_GRID = 64
# kappa's interval: Wald's in log kappa from the observed information (two likelihood evaluations;
# the profile-likelihood interval, the kappas within 1.92 of the maximum, agreed with it to 0.5% in
# width on Dumitriu-Edelman samples and cost 15 times as many). The eigenvalues are treated as
# independent draws of the limiting law (a pseudo-likelihood); on those samples the 95% interval
# covered the true kappa 46-50 times in 50 (N = 400-2000, gamma 0.1-0.5, kappa 0.5-20; tests).
INFORMATION_STEP = 0.01  # the central difference's step in log kappa
_TINY = 1e-150  # below it the float64 path loses its terms; the density is its power law there
# scipy.special.hyp1f1 (1.17.1) is wrong at and around integer a >= 5 when 0 < b < 1 and -1 < z < 0:
# M(5, 0.999, -0.68) comes out -1.63 where mpmath says -0.271, and the relative error falls off only
# as about 1e-14 / |a - round(a)| (1e-4 at a = 5 + 1e-10). There M(a, b, z) is taken from M(a, b+1, z)
# and M(a, b+2, z) by the contiguous relation DLMF 13.3.2 (within 5e-12 of mpmath for a <= 50,
# 0 < b < 1, |z| < 1.6, whatever a). The law meets that region for delta in (0, 1) (M(c, 1-delta, .))
# and, at gamma = 1 where delta = 0 is evaluated at 0 -+ 1e-3, in M(c + delta, 1 + delta, .) too:
# square and near-square matrices, with kappa near an even integer of 10 or more.
_SHIFT_B_FROM_A = 4.0
_NUDGE_A = 1e-13
_SHIFT_B_BELOW_Y = 1.5


def shape_parameters(kappa: float, gamma: float) -> tuple[float, float, float]:
    """(c, delta, s) of the standardised law."""
    c = kappa / 2.0
    delta = kappa * (1.0 - gamma) / (2.0 * gamma)
    return c, delta, c + delta


def _kummer_m(a: float, b: float, y: np.ndarray) -> np.ndarray:
    """Kummer's M(a, b, -y) for y >= 0, around the region where scipy's hyp1f1 is wrong."""
    from scipy import special

    if b < 0.0 and b - a <= 0.0 and float(b - a).is_integer():
        # Also wrong where b - a is exactly a non-positive integer with b < 0 (an integer c + delta):
        # M(2.2, -40.8, -8.36) comes out 5.6e-5 off mpmath, while a moved by 1e-14 relative gives
        # it to 1e-15. M is smooth in a there, so the move costs ~1e-13 (tests/test_htmp.py).
        a = a * (1.0 + _NUDGE_A)
    values = special.hyp1f1(a, b, -y)
    if a >= _SHIFT_B_FROM_A and 0.0 < b < 1.0:
        near = np.flatnonzero(y < _SHIFT_B_BELOW_Y)
        if near.size:
            z = -y[near]
            up = b + 1.0
            # b (b-1) M(a, b-1) + b (1-b-z) M(a, b) + z (b-a) M(a, b+1) = 0, at b + 1.
            values[near] = -(up * (1.0 - up - z) * special.hyp1f1(a, up, z)
                             + z * (up - a) * special.hyp1f1(a, up + 1.0, z)) / (up * b)
    return values


def _u_parts(c: float, d: float, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log scale L and scaled real parts a, b with U(c, 1-d, -y - i0) = e^L (a + b e^{-i pi d})."""
    from scipy import special

    m1 = _kummer_m(c, 1.0 - d, y)
    m2 = _kummer_m(c + d, 1.0 + d, y)
    with np.errstate(divide="ignore"):
        log_a = special.gammaln(d) - special.gammaln(c + d) + np.log(np.abs(m1))
        log_b = special.gammaln(-d) - special.gammaln(c) + d * np.log(y) + np.log(np.abs(m2))
    scale = np.maximum(log_a, log_b)
    # Far out in the tail both terms underflow to log 0: -inf - -inf is NaN, which the callers
    # replace (logpdf by its tail asymptote, the CDF by 1); it is not worth a warning.
    with np.errstate(invalid="ignore"):
        a = special.gammasgn(d) * np.sign(m1) * np.exp(log_a - scale)
        b = special.gammasgn(-d) * np.sign(m2) * np.exp(log_b - scale)
    return scale, a, b


def _log_modulus_squared(c: float, d: float, y: np.ndarray) -> np.ndarray:
    """log |U(c, 1-d, -y - i0)|^2."""
    if d > DELTA_CONTOUR:
        return 2.0 * contour.log_u(c, d, y).real
    scale, a, b = _u_parts(c, d, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * scale + np.log(a * a + b * b + 2.0 * a * b * math.cos(math.pi * d))


def _logpdf_cd(x: np.ndarray, c: float, d: float) -> np.ndarray:
    from scipy import special

    s = c + d
    y = s * x
    log_modulus = _log_modulus_squared(c, d, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (math.log(s) + (d - 1.0) * np.log(y) - y - special.gammaln(c + 1.0) - special.gammaln(c + d)
                - log_modulus)


def _at_both_sides(fn, x: np.ndarray, c: float, d: float, richardson: bool = True) -> np.ndarray:  # type: ignore[no-untyped-def]
    """fn(x, c, d), except within the gap of an integer delta (0 included: gamma = 1).

    There Gamma(+-d) and Kummer's M have poles that cancel in the law, and the float64 terms lose
    digits as 1/(d - n)^2. The law is analytic in delta, so it is taken from the symmetric means at
    n -+ gap and n -+ 2 gap (Richardson: error O(gap^4)), plus the slope times the offset from n.
    Without `richardson` the mean at n -+ gap alone (error O(gap^2), below 1e-4 in the log-density:
    nothing beside a fit's own error) halves the cost, which for a square matrix is every call.
    """
    n = round(d)
    # The step must also be small beside c, or the extrapolation spans a visibly different law.
    h = min(_INTEGER_DELTA_GAP, c / 100.0)
    if abs(d - n) >= h or d - 2 * h > DELTA_CONTOUR:  # the contour has no poles to step around
        return fn(x, c, d)
    below, above = fn(x, c, n - h), fn(x, c, n + h)
    centre = 0.5 * (below + above)
    if richardson:
        wide = 0.5 * (fn(x, c, n - 2 * h) + fn(x, c, n + 2 * h))
        centre = (4.0 * centre - wide) / 3.0
    return centre + (d - n) * (above - below) / (2 * h)


def logpdf(x: np.ndarray, kappa: float, gamma: float) -> np.ndarray:
    """Log-density of the standardised HTMP law; -inf where x <= 0, never NaN.

    Defined for delta <= DELTA_MAX (1e5), where it is validated against mpmath; beyond it a
    ValueError says so (fits never go there). Where float64 under- or overflows (x below 1e-150,
    or far out in the Gamma-like upper tail) the density continues as its asymptotic power law at 0
    (x^(delta-1)) or its tail x^(delta-1+kappa) e^(-s x), anchored at the last finite value.
    """
    return _logpdf(x, kappa, gamma, richardson=True)


def _logpdf(x: np.ndarray, kappa: float, gamma: float, richardson: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    _check(kappa, gamma)
    if kappa > KAPPA_MAX:
        return mp_logpdf(x, _mp_equivalent_gamma(kappa, gamma))
    out = np.full(x.shape, -np.inf)
    c, d, s = shape_parameters(kappa, gamma)
    positive = x > 0
    if d > DELTA_MAX:
        raise ValueError(f"the HTMP law is validated for delta <= {DELTA_MAX:g}; kappa={kappa:g}, "
                         f"gamma={gamma:g} give delta={d:g}")
    regular = x >= _TINY
    values = _at_both_sides(_logpdf_cd, x[regular], c, d, richardson)
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
        anchor = _at_both_sides(_logpdf_cd, np.array([_TINY]), c, d, richardson)[0]
        out[tiny] = anchor + (d - 1.0) * (np.log(x[tiny]) - math.log(_TINY))
    return out


def pdf(x: np.ndarray, kappa: float, gamma: float) -> np.ndarray:
    return np.exp(logpdf(x, kappa, gamma))


def _phase_cd(x: np.ndarray, c: float, d: float) -> np.ndarray:
    """arg U(c, 1-d, -(c+d) x - i0), wrapped to (-pi, pi]."""
    if d > DELTA_CONTOUR:
        return np.angle(np.exp(1j * contour.log_u(c, d, (c + d) * x).imag))
    _, a, b = _u_parts(c, d, (c + d) * x)
    return np.arctan2(-b * math.sin(math.pi * d), a + b * math.cos(math.pi * d))


def _cdf_cd(x: np.ndarray, c: float, d: float, exact_points: bool = True) -> np.ndarray:
    """CDF at sorted positive x: 1 / (pi c) times the unwrapped phase of U from 0 to x.

    The phase is followed on a grid refined until it moves by less than pi/2 between neighbours.
    With `exact_points` the grid holds every x (of 1,024 points at least); otherwise x is
    interpolated, monotone-cubically, between 512 grid points (error about 3e-5: ample for a KS
    distance, and much cheaper for thousands of points; linear interpolation needs 1,024 for it).
    """
    top = float(x[-1])
    half = 512 if exact_points else 256
    base = np.r_[np.geomspace(min(float(x[0]), 1e-12), top, half), np.linspace(0, top, half)[1:]]
    # The phase turns by pi c across the bulk, 1 +- a few sd: where that is narrow beside the grid
    # (large delta), steps of 2 pi would alias, so the bulk gets its own points.
    sd = math.sqrt((c + 1.0) / (c + d))
    bulk = np.linspace(max(1.0 - 12.0 * sd, 0.0), 1.0 + 12.0 * sd, half)
    base = np.r_[base, bulk[(bulk > 0) & (bulk < top)]]
    grid = np.unique(np.r_[base, x] if exact_points else base)
    theta = _phase_cd(grid, c, d)
    for _ in range(12):
        steps = np.abs(np.angle(np.exp(1j * np.diff(theta))))
        steps[~np.isfinite(steps)] = 0.0
        coarse = np.flatnonzero(steps > math.pi / 2)
        if coarse.size == 0:
            break
        # Only the midpoints are new: the phase is pointwise, so the old points keep their values.
        middle = 0.5 * (grid[coarse] + grid[coarse + 1])
        fresh = (middle > grid[coarse]) & (middle < grid[coarse + 1])  # not a duplicate of an end
        coarse, middle = coarse[fresh], middle[fresh]
        if coarse.size == 0:
            break
        grid = np.insert(grid, coarse + 1, middle)
        theta = np.insert(theta, coarse + 1, _phase_cd(middle, c, d))
    # Far out in the upper tail the float64 terms overflow: the law has all but nothing left there.
    finite = np.isfinite(theta)
    unwrapped = np.abs(np.unwrap(np.r_[0.0, theta[finite]])[1:]) / (math.pi * c)
    if exact_points or finite.sum() < 3:
        return np.interp(x, grid[finite], unwrapped, right=1.0)
    return _monotone_cubic(grid[finite], unwrapped, x, right=1.0)


def _monotone_cubic(xs: np.ndarray, ys: np.ndarray, x: np.ndarray, right: float) -> np.ndarray:
    """Piecewise cubic Hermite interpolation of increasing xs with Fritsch-Carlson slopes (scipy's
    PCHIP): it keeps a monotone sequence monotone, as a CDF must stay; `right` beyond xs[-1]."""
    h = np.diff(xs)
    slopes = np.zeros(xs.size)
    w1, w2 = 2.0 * h[1:] + h[:-1], h[1:] + 2.0 * h[:-1]
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        # A rise of a few ulps underflows delta or overflows w / delta: the harmonic mean is then 0,
        # its limit, as it should be.
        delta = np.diff(ys) / h
        same_sign = delta[:-1] * delta[1:] > 0
        harmonic = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    slopes[1:-1] = np.where(same_sign, harmonic, 0.0)
    slopes[0] = _end_slope(h[0], h[1], delta[0], delta[1])
    slopes[-1] = _end_slope(h[-1], h[-2], delta[-1], delta[-2])
    k = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, xs.size - 2)
    t = (x - xs[k]) / h[k]
    with np.errstate(under="ignore"):  # terms of subnormal size round to 0, as they may
        values = ((1.0 + 2.0 * t) * (1.0 - t) ** 2 * ys[k] + t * (1.0 - t) ** 2 * h[k] * slopes[k]
                  + t * t * (3.0 - 2.0 * t) * ys[k + 1] + t * t * (t - 1.0) * h[k] * slopes[k + 1])
    return np.where(x > xs[-1], right, values)


def _end_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    """The one-sided three-point slope at an end, limited so as not to overshoot (as scipy's PCHIP)."""
    h0, h1, m0, m1 = float(h0), float(h1), float(m0), float(m1)  # Python floats: inf, not a warning
    slope = ((2.0 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if math.copysign(1.0, slope) != math.copysign(1.0, m0) or slope == 0.0 or m0 == 0.0:
        return 0.0
    if (m1 == 0.0 or math.copysign(1.0, m0) != math.copysign(1.0, m1)) and abs(slope) > 3.0 * abs(m0):
        return 3.0 * m0
    return slope


def cdf(x: np.ndarray, kappa: float, gamma: float, exact_points: bool = True) -> np.ndarray:
    """CDF of the standardised law: (2 / (pi kappa)) times the unwrapped phase change of U from 0 to x.

    Below x = 1e-150 it continues as the power law of the density at 0, F ~ x^delta. Defined for
    delta <= DELTA_MAX, like `logpdf`.
    """
    return _cdf(x, kappa, gamma, exact_points, richardson=True)


def _cdf(x: np.ndarray, kappa: float, gamma: float, exact_points: bool, richardson: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    _check(kappa, gamma)
    if kappa > KAPPA_MAX:
        return mp_cdf(x, _mp_equivalent_gamma(kappa, gamma))
    out = np.zeros(x.shape)
    regular = x >= _TINY
    c, d, _ = shape_parameters(kappa, gamma)
    if d > DELTA_MAX:
        raise ValueError(f"the HTMP law is validated for delta <= {DELTA_MAX:g}; got delta={d:g}")
    if regular.any():
        order = np.argsort(x[regular])
        values = np.empty(order.size)
        evaluate = partial(_cdf_cd, exact_points=exact_points)
        values[order] = np.clip(_at_both_sides(evaluate, x[regular][order], c, d, richardson), 0.0, 1.0)
        out[regular] = values
    tiny = (x > 0) & ~regular
    if tiny.any():
        anchor = float(np.clip(_at_both_sides(_cdf_cd, np.array([_TINY]), c, d, richardson), 0.0, 1.0)[0])
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


def minimize_bounded(fn: Callable[[float], float], bounds: tuple[float, float], xatol: float = 1e-5,
                     max_evaluations: int = 500) -> tuple[float, float]:
    """(x, fn(x)) at a local minimum of fn on [lo, hi], by Brent's method (R. P. Brent, Algorithms
    for Minimization without Derivatives, 1973, chapter 5; the `fmin` of Forsythe, Malcolm and
    Moler): golden-section steps, replaced by the vertex of the parabola through the three best
    points whenever it lies inside the bracket and moves less than half the step before last.

    The same method as scipy.optimize.minimize_scalar(method="bounded"), whose import alone costs
    about 0.4 s, more than the fits of a small model (tests/test_htmp.py compares the two)."""
    lo, hi = bounds
    if not lo <= hi:
        raise ValueError(f"the lower bound {lo} exceeds the upper bound {hi}")
    root_eps = math.sqrt(2.2e-16)
    shrink = (3.0 - math.sqrt(5.0)) / 2.0  # the golden section's smaller share, 0.382
    a, b = lo, hi
    # x: the lowest point so far; w: the second lowest; v: the previous value of w.
    x = w = v = a + shrink * (b - a)
    fx = fw = fv = fn(x)
    evaluations = 1
    step = before_last = 0.0
    while evaluations < max_evaluations:
        middle = 0.5 * (a + b)
        tol = root_eps * abs(x) + xatol / 3.0
        if abs(x - middle) <= 2.0 * tol - 0.5 * (b - a):
            break
        parabolic = False
        if abs(before_last) > tol:
            # The parabola through (x, fx), (w, fw), (v, fv) has its vertex at x + p / q.
            r = (x - w) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - w) * r
            q = 2.0 * (q - r)
            p = -p if q > 0.0 else p
            q = abs(q)
            limit, before_last = before_last, step
            if abs(p) < abs(0.5 * q * limit) and q * (a - x) < p < q * (b - x):
                parabolic = True
                step = p / q
                if (x + step) - a < 2.0 * tol or b - (x + step) < 2.0 * tol:
                    step = tol if middle >= x else -tol  # not closer to an end than the tolerance
        if not parabolic:
            before_last = (a - x) if x >= middle else (b - x)  # into the larger part of the bracket
            step = shrink * before_last
        u = x + (step if abs(step) >= tol else math.copysign(tol, step))
        fu = fn(u)
        evaluations += 1
        if fu <= fx:
            if u >= x:
                a = x
            else:
                b = x
            v, fv, w, fw, x, fx = w, fw, x, fx, u, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or w == x:
                v, fv, w, fw = w, fw, u, fu
            elif fu <= fv or v == x or v == w:
                v, fv = u, fu
    return x, fx


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
    # kappa's 95% interval (observed information, see Z_95). None when the likelihood is flat there;
    # an end at a bound of the kappa range means it reaches past it.
    kappa_low: float | None = None
    kappa_high: float | None = None


def better_fit(*fits: HTMPFit | None) -> HTMPFit | None:
    """Of the successful fits given (a layer's two orientations), the one with the smaller KS
    distance: the kappa htmp shows everywhere. None if none succeeded."""
    fitted = [f for f in fits if f is not None and f.status == "success"]
    return min(fitted, key=lambda f: f.ks_htmp) if fitted else None


def _summed_interpolation_weights(u: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """w with w @ f(grid) = the sum over u of the cubic interpolant of f at u (uniform grid, >= 4 points).

    Each u is interpolated by the Lagrange polynomial through the four grid points around it (the
    first or last four at the ends), so the likelihood of a grid of values is one dot product.
    """
    size = grid.size
    step = (grid[-1] - grid[0]) / (size - 1)
    cell = np.clip(np.floor((u - grid[0]) / step).astype(np.int64), 0, size - 2)
    first = np.clip(cell - 1, 0, size - 4)
    t = (u - grid[0]) / step - first  # position within the stencil first .. first + 3, in [0, 3]
    stencil = (-(t - 1) * (t - 2) * (t - 3) / 6, t * (t - 2) * (t - 3) / 2,
               -t * (t - 1) * (t - 3) / 2, t * (t - 1) * (t - 2) / 6)
    weights = np.zeros(size)
    for k, w in enumerate(stencil):
        weights += np.bincount(first + k, weights=w, minlength=size)
    return weights


def fit_htmp(eigenvalues: np.ndarray, gamma: float, orientation: str = "direct") -> HTMPFit:
    """Maximum-likelihood kappa over log kappa in [KAPPA_MIN, KAPPA_MAX], scale = the exact mean.

    The likelihood interpolates the log-density on a grid of 64 log-spaced points, four-point
    Lagrange in log x (exact for power laws, and checked against the pointwise likelihood in the
    tests); the optimiser is bounded Brent.
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
    points = np.exp(grid)
    weights = _summed_interpolation_weights(log_x, grid)

    def negative_loglik(log_kappa: float) -> float:
        dens = _logpdf(points, math.exp(log_kappa), gamma, richardson=False)
        if not np.isfinite(dens).all():
            return math.inf
        return -float(weights @ dens)

    # The law is validated up to delta = DELTA_MAX, i.e. kappa = 2 gamma DELTA_MAX / (1 - gamma): a cap
    # only below gamma = 1/2001 (kappa = 100 there), shapes such as 262,144 x 100.
    kappa_max = KAPPA_MAX if gamma >= 1.0 else min(KAPPA_MAX, 2.0 * gamma * DELTA_MAX / (1.0 - gamma))
    bounds = (math.log(KAPPA_MIN), math.log(kappa_max))
    log_kappa, best = minimize_bounded(negative_loglik, bounds, xatol=1e-3)
    if not np.isfinite(best):
        return HTMPFit(status="failed", orientation=orientation, gamma=gamma, n_fitted=n,
                       reason="the likelihood is not finite anywhere on the kappa range")
    kappa = math.exp(log_kappa)
    low, high = _interval(negative_loglik, log_kappa, best, bounds)
    at_bound = None
    if log_kappa - bounds[0] < 1e-3:
        at_bound = "lower"
    elif bounds[1] - log_kappa < 1e-3:
        at_bound = "upper"
    _, delta, _ = shape_parameters(kappa, gamma)
    ks = ks_distance(x, _cdf(x, kappa, gamma, exact_points=False, richardson=False))
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
        kappa_low=low,
        kappa_high=high,
    )


def _interval(negative_loglik: Callable[[float], float], log_kappa: float, best: float,
              bounds: tuple[float, float]) -> tuple[float | None, float | None]:
    """kappa's 95% interval from the observed information in log kappa: exp(log kappa +- 1.96 /
    sqrt(I)), I the likelihood's curvature there (a central difference), cut at the kappa range.
    None where the curvature is not positive (a flat likelihood: kappa at a bound, or MP-like)."""
    h = INFORMATION_STEP
    if log_kappa - h < bounds[0] or log_kappa + h > bounds[1]:
        return None, None
    information = (negative_loglik(log_kappa + h) - 2.0 * best + negative_loglik(log_kappa - h)) / (h * h)
    if not (math.isfinite(information) and information > 0):
        return None, None
    half = Z_95 / math.sqrt(information)
    return math.exp(max(log_kappa - half, bounds[0])), math.exp(min(log_kappa + half, bounds[1]))
