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


def htmp_density(x: np.ndarray, kappa: float, gamma: float, scale: float, orientation: str, share: float) -> np.ndarray:
    """share * HTMP density of lambda: lambda / scale ~ HTMP (direct) or scale / lambda ~ HTMP (inverse)."""
    if orientation == "direct":
        density = htmp_law.pdf(x / scale, kappa, gamma) / scale
    else:
        density = htmp_law.pdf(scale / x, kappa, gamma) * scale / x**2
    density = share * density
    return np.where(np.isfinite(density) & (density > 0), density, np.nan)
