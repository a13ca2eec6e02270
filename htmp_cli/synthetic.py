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


def _spikes(N: int, M: int, strengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    U = np.linalg.qr(rng.standard_normal((N, strengths.size)))[0]
    V = np.linalg.qr(rng.standard_normal((M, strengths.size)))[0]
    return (U * strengths) @ V.T


def phase_layer(phase: str, N: int, M: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic N x M weight matrix (N >= M) in the given phase, on the scale of G / sqrt(N).

    random-like: Gaussian noise. bleeding-out: noise plus 5-15 rank-one signals around the detection
    threshold gamma^(1/4), so a few eigenvalues smear just past the edge. bulk+spikes: noise plus
    1-5 strong signals. bulk-decay: noise whose column variances ramp smoothly from 1 up to 2.5-4
    over the top 10-25% of columns, so a tail grows out of the bulk with no gap. heavy-tailed:
    Student-t entries with 1.5-2.5 degrees of freedom. rank-collapse: a product of thin Gaussian factors (rank 40-80% of M) plus faint noise.
    """
    gamma = M / N
    noise = rng.standard_normal((N, M)) / np.sqrt(N)
    if phase == "random-like":
        return noise
    if phase == "bleeding-out":
        k = int(rng.integers(5, 16))
        strengths = gamma**0.25 * rng.uniform(1.0, 1.15, size=k)
        return noise + _spikes(N, M, strengths, rng)
    if phase == "bulk+spikes":
        k = int(rng.integers(1, 6))
        strengths = rng.uniform(2.0, 5.0, size=k)
        return noise + _spikes(N, M, strengths, rng)
    if phase == "bulk-decay":
        # Population variances 1, except a top share ramping smoothly up: a tail out of the bulk.
        variances = np.ones(M)
        top = max(2, int(M * rng.uniform(0.10, 0.25)))
        variances[:top] = np.linspace(rng.uniform(2.5, 4.0), 1.0, top)
        return noise * np.sqrt(variances)
    if phase == "heavy-tailed":
        df = rng.uniform(1.5, 2.5)
        return rng.standard_t(df, size=(N, M)) / np.sqrt(N)
    if phase == "rank-collapse":
        rank = int(M * rng.uniform(0.4, 0.8))
        low = rng.standard_normal((N, rank)) @ rng.standard_normal((rank, M)) / np.sqrt(N * rank)
        return low + 1e-7 * noise
    raise ValueError(f"unknown phase {phase!r}")
