"""The fitted densities of a layer, on the scale of its ESD histogram (for figures; no I/O, no drawing).

Every density is per eigenvalue of the whole spectrum (zeros included in the count), so the
histogram and the three fitted laws can share one axis: the power law carries the tail's share of
the eigenvalues, Marchenko-Pastur the bulk's, HTMP (fitted to every non-zero eigenvalue) theirs.
"""

from __future__ import annotations

import numpy as np

from htmp_cli.fits import htmp as htmp_law
from htmp_cli.fits.mp import mp_logpdf


def log_bins(eigenvalues: np.ndarray, n_bins: int = 60) -> np.ndarray:
    """Log-spaced bin edges over the positive eigenvalues (a single bin around a lone value)."""
    positive = eigenvalues[eigenvalues > 0]
    if positive.size == 0:
        return np.array([1.0, 10.0])
    lo, hi = float(positive.min()), float(positive.max())
    if hi <= lo * (1 + 1e-9):
        lo, hi = lo / 1.5, hi * 1.5
    return np.geomspace(lo, hi * (1 + 1e-9), n_bins + 1)


def esd_histogram(eigenvalues: np.ndarray, n_bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and density: counts / (all eigenvalues x bin width)."""
    edges = log_bins(eigenvalues, n_bins)
    counts, _ = np.histogram(eigenvalues[eigenvalues > 0], bins=edges)
    return edges, counts / (max(eigenvalues.size, 1) * np.diff(edges))


def power_law_density(x: np.ndarray, alpha: float, xmin: float, share: float) -> np.ndarray:
    """share * (alpha - 1) / xmin * (x / xmin)^-alpha from xmin on; NaN below (nothing to draw)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        density = share * (alpha - 1.0) / xmin * (x / xmin) ** (-alpha)
    return np.where(x >= xmin, density, np.nan)


def mp_density(x: np.ndarray, scale: float, gamma: float, share: float) -> np.ndarray:
    """share * MP density of lambda with lambda / scale ~ MP(gamma, sigma^2 = 1); NaN outside the support."""
    density = share * np.exp(mp_logpdf(x / scale, gamma)) / scale
    return np.where(density > 0, density, np.nan)


def _negligible_beyond(kappa: float, gamma: float) -> float:
    """A standardised argument past which the HTMP density is below 1e-12 of its peak (at most 1e8).

    The standardised law has mean 1 and an exponentially light upper tail; scipy's hyp1f1 slows to
    seconds per point at arguments of 1e9 and more, which the inverse orientation of a nearly
    rank-deficient layer would ask for.
    """
    peak = float(np.max(htmp_law.pdf(np.geomspace(1e-3, 10.0, 64), kappa, gamma)))
    cutoff = 1e2
    while cutoff < 1e8 and htmp_law.pdf(np.array([cutoff]), kappa, gamma)[0] > 1e-12 * peak:
        cutoff *= 10
    return cutoff


def htmp_density(x: np.ndarray, kappa: float, gamma: float, scale: float, orientation: str, share: float) -> np.ndarray:
    """share * HTMP density of lambda: lambda / scale ~ HTMP (direct) or scale / lambda ~ HTMP (inverse).

    NaN (nothing to draw) where the density is negligible or not positive.
    """
    argument = x / scale if orientation == "direct" else scale / x
    inside = argument <= _negligible_beyond(kappa, gamma)
    law = np.full(x.shape, np.nan)
    law[inside] = htmp_law.pdf(argument[inside], kappa, gamma)
    density = share * (law / scale if orientation == "direct" else law * scale / x**2)
    return np.where(np.isfinite(density) & (density > 0), density, np.nan)
