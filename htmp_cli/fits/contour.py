"""Tricomi's U(c, 1 - delta, -y - i0) for large delta, by an integral along a saddle-point contour.

The connection formula through Kummer's M (htmp.py) loses its digits once delta exceeds a few
hundred: M(c, 1 - delta, -y) sums terms that pass near the poles of (1 - delta)_k and cancel. The
integral representation U(a, b, z) = (1/Gamma(a)) int_0^inf e^(-z t) t^(a-1) (1 + t)^(b-a-1) dt
(DLMF 13.4.4), continued to z = -y - i0 by turning its ray to arg t = pi (passing above t = -1), is
with t = -tau

    U(c, 1 - delta, -y - i0) = e^(i pi c) / Gamma(c) * int e^(phi(tau)) dtau,
    phi(tau) = -y tau + (c - 1) log tau - s log(1 - tau),   s = c + delta,

along any path from 0 to infinity in the lower half-plane that passes below tau = 1 (log tau and
log(1 - tau) principal; the path may leave the real axis anywhere left of 1 and go straight down,
because |e^(-y tau)| stays bounded there while |1 - tau|^(-s) decays). The saddle points of phi solve
y tau^2 + (delta + 1 - y) tau + (c - 1) = 0. The path runs along the real axis to p and then straight
down: p is the real part of the complex saddle (the bulk of the law), or the real saddle where phi
has its minimum along the axis (the tails), so that the vertical leg leaves p in the direction of
steepest descent and the integrand neither oscillates nor cancels. Every leg is summed in log space
by the double-exponential rules (tanh-sinh on the real legs, exp-sinh on the vertical one), split at
the real maximum of phi so that it sits at an end where the rule's nodes cluster.

Valid, against mpmath, for delta from 200 to 1e5 and c from 0.01 to 50 (tests/test_htmp.py).
"""

from __future__ import annotations

import math

import numpy as np

# The double-exponential rules' step. At 1/32 a large c with a moderate delta (c = 45, delta = 300,
# x = 1.6) was off mpmath by 1e-5 in log|U|; at 1/64 by 1e-12. About 1,200 terms a point.
STEP = 1.0 / 64
_T_FINITE = np.arange(-3.2, 3.2 + STEP / 2, STEP)  # tanh-sinh: the ends' nodes reach 1e-17 of the leg
_T_VERTICAL = np.arange(-3.9, 2.2 + STEP / 2, STEP)  # exp-sinh: from 1e-16 to 300 saddle widths

_Z = math.pi * np.sinh(_T_FINITE)
# u = 1 / (1 + e^-z) and its weight du/dt, in logs so that the nodes next to 0 keep their digits.
_LOG_U = -np.logaddexp(0.0, -_Z)
_LOG_DU = _LOG_U - np.logaddexp(0.0, _Z) + np.log(math.pi * np.cosh(_T_FINITE))
_U = np.exp(_LOG_U)
_Q = np.exp(0.5 * math.pi * np.sinh(_T_VERTICAL))
_LOG_DQ = np.log(_Q * 0.5 * math.pi * np.cosh(_T_VERTICAL))


def _real_phi(tau: np.ndarray, y: np.ndarray, c: float, s: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return -y * tau + (c - 1.0) * np.log(np.abs(tau)) - s * np.log(np.abs(1.0 - tau))


def _path(c: float, delta: float, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, split, width): where the path turns down, the real maximum of phi before p (0: none
    inside), and the saddle's scale 1 / sqrt|phi''|."""
    s = c + delta
    b = delta + 1.0 - y
    discriminant = b * b - 4.0 * y * (c - 1.0)
    root = np.sqrt(np.abs(discriminant))
    # The real roots without cancellation: q / y and (c - 1) / q, q = -(b + sign(b) root) / 2.
    q = -0.5 * (b + np.where(b >= 0, root, -root))
    with np.errstate(divide="ignore", invalid="ignore"):
        r1, r2 = q / y, np.where(q == 0, 0.0, (c - 1.0) / q)
    far_first = np.abs(r1) > np.abs(r2)
    far, near = np.where(far_first, r1, r2), np.where(far_first, r2, r1)
    if c >= 1.0:
        # phi rises from -inf at 0 to its maximum at the near root and falls to its minimum at the far one.
        p_real, split_real = far, near
    else:
        # One root either side of 0, both minima of phi along the axis (phi is +inf at 0): the lower.
        p_real = np.where(_real_phi(r1, y, c, s) < _real_phi(r2, y, c, s), r1, r2)
        # A far negative minimum (small y): the singular start to -1/s, where the power law
        # (1 - tau)^-s sets in, then geometric steps over the decades beyond.
        split_real = np.where(p_real < -1.0 / s, -1.0 / s, 0.0)
    pair = discriminant < 0
    p = np.where(pair, -b / (2.0 * y), p_real)
    split = np.where(pair, 0.0, split_real)
    saddle = np.where(pair, (-b - 1j * root) / (2.0 * y), p + 0j)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = 1.0 / np.sqrt(np.abs(-(c - 1.0) / saddle**2 + s / (1.0 - saddle) ** 2))
    # A saddle at 0 or 1 to rounding: the scale of the bulk, which the rules' range covers amply.
    width = np.where(np.isfinite(width) & (width > 0), width, 1.0 / math.sqrt(s))
    return p, split, width


def _log_tau_below(tau: np.ndarray) -> np.ndarray:
    """log tau on the real axis approached from below: arg -pi on the negative side."""
    with np.errstate(divide="ignore"):
        return np.log(np.abs(tau)) - 1j * math.pi * (tau < 0)


def _linear_leg(a: np.ndarray, b: np.ndarray, y: np.ndarray, c: float, s: float) -> np.ndarray:
    """log of the tanh-sinh terms of the integral from a to b along the real axis."""
    tau = a + (b - a) * _U
    with np.errstate(divide="ignore", invalid="ignore"):
        return (-y * tau + (c - 1.0) * _log_tau_below(tau) - s * np.log1p(-tau)
                + np.log(np.abs(b - a)) + 1j * math.pi * (b < a) + _LOG_DU)


def _geometric_leg(a: np.ndarray, b: np.ndarray, y: np.ndarray, c: float, s: float) -> np.ndarray:
    """From a to b of one sign, tau = a (b/a)^u: a leg over decades (a small y's far saddle)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(b / a)
        tau = a * np.exp(ratio * _U)
        return (-y * tau + (c - 1.0) * _log_tau_below(tau) - s * np.log1p(-tau)
                + _log_tau_below(tau) + np.log(np.abs(ratio)) + 1j * math.pi * (ratio < 0) + _LOG_DU)


def _singular_leg(a: np.ndarray, y: np.ndarray, c: float, s: float) -> np.ndarray:
    """From 0 to a for c < 1, where tau^(c-1) is singular: tau = a v^(1/c), tau^(c-1) dtau = (a^c / c) dv."""
    tau = a * np.exp(_LOG_U / c)
    with np.errstate(divide="ignore"):
        log_a_to_c = c * np.log(np.abs(a)) - 1j * math.pi * c * (a < 0)
        return log_a_to_c - math.log(c) - y * tau - s * np.log1p(-tau) + _LOG_DU


def log_u(c: float, delta: float, y: np.ndarray) -> np.ndarray:
    """log U(c, 1 - delta, -y - i0) for y > 0, complex: its real part log|U|, its imaginary part
    an argument of U (to be unwrapped along y: it is continuous in y only up to multiples of 2 pi)."""
    from scipy import special

    y = np.asarray(y, dtype=np.float64)
    s = c + delta
    p, split, width = (v[:, None] for v in _path(c, delta, y))
    column = y[:, None]
    if c >= 1.0:
        legs = [np.where(split == 0.0, -np.inf, _linear_leg(np.zeros_like(split), split, column, c, s)),
                np.where(split == 0.0, _linear_leg(np.zeros_like(p), p, column, c, s),
                         _geometric_leg(np.where(split == 0.0, 1.0, split), p, column, c, s))]
    else:
        legs = [_singular_leg(np.where(split == 0.0, p, split), column, c, s),
                np.where(split == 0.0, -np.inf, _geometric_leg(np.where(split == 0.0, 1.0, split), p, column, c, s))]
    tau = p - 1j * width * _Q
    legs.append(-column * tau + (c - 1.0) * np.log(tau) - s * np.log1p(-tau) + np.log(width) + _LOG_DQ
                - 0.5j * math.pi)
    terms = np.concatenate(legs, axis=1)
    terms = np.where(np.isnan(terms.real), -np.inf, terms)
    top = np.max(terms.real, axis=1, keepdims=True)
    with np.errstate(under="ignore"):
        total = np.sum(np.exp(terms - top), axis=1) * STEP
    return top[:, 0] + np.log(total) + 1j * math.pi * c - special.gammaln(c)
