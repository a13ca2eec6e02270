"""Synthetic spectra and layers of known character, for tests, calibration and demos (no I/O)."""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigvalsh_tridiagonal


def htmp_sample(n: int, kappa: float, gamma: float, rng: np.random.Generator) -> np.ndarray:
    """n standardised HTMP eigenvalues from the Dumitriu-Edelman bidiagonal beta-Laguerre model.

    beta = kappa/n, a = kappa/(2 gamma); B lower bidiagonal with B_ii ~ chi(2a - beta i) and
    B_{i+1,i} ~ chi(beta (n-1-i)); the eigenvalues of B B^T times gamma/kappa (math.md section 5).
    """
    beta = kappa / n
    a = kappa / (2.0 * gamma)
    i = np.arange(n)
    diagonal = np.sqrt(rng.chisquare(2.0 * a - beta * i))
    sub = np.sqrt(rng.chisquare(beta * (n - 1 - i[:-1]))) if n > 1 else np.empty(0)
    # B B^T is tridiagonal: diagonal alpha_i^2 + beta_{i-1}^2, off-diagonal beta_i alpha_i.
    main = diagonal**2 + np.r_[0.0, sub**2]
    off = sub * diagonal[:-1]
    return np.sort(eigvalsh_tridiagonal(main, off)) * gamma / kappa
