"""Marchenko-Pastur bulk and spikes on synthetic matrices of known spectra."""

from __future__ import annotations

import numpy as np
import pytest

from htmp_cli.fits.mp import fit_mp
from htmp_cli.spectral import eigenvalues


def _spectrum(W: np.ndarray) -> np.ndarray:
    return eigenvalues(W, backend="numpy").eigenvalues


@pytest.mark.parametrize("N, M", [(1000, 500), (2000, 400), (800, 800), (1500, 250)])
def test_pure_noise_recovers_sigma2_within_2_percent(N: int, M: int) -> None:
    rng = np.random.default_rng(N + M)
    variance = 0.37
    fit = fit_mp(_spectrum(rng.standard_normal((N, M)) * np.sqrt(variance)), N, M)
    assert fit.status == "success"
    assert fit.sigma2 == pytest.approx(variance, rel=0.02)
    assert fit.ks_bulk < 0.05


def test_pure_noise_has_no_spikes_in_at_least_95_of_100_seeds() -> None:
    N, M = 600, 300
    with_spikes = sum(fit_mp(_spectrum(np.random.default_rng(seed).standard_normal((N, M))), N, M).n_spikes > 0
                      for seed in range(100))
    assert with_spikes <= 5


@pytest.mark.parametrize("strengths", [[2.0], [1.6, 2.5, 4.0], [1.5, 2.0, 3.0, 5.0, 8.0]])
def test_rank_k_spikes_are_found_at_their_predicted_positions(strengths: list[float]) -> None:
    """W = G/sqrt(N) + sum S u v^T: an outlier at (1+S^2)(gamma+S^2)/S^2 for each S > gamma^(1/4)."""
    N, M = 2000, 1000
    gamma = M / N
    rng = np.random.default_rng(len(strengths))
    W = rng.standard_normal((N, M)) / np.sqrt(N)
    U = np.linalg.qr(rng.standard_normal((N, len(strengths))))[0]
    V = np.linalg.qr(rng.standard_normal((M, len(strengths))))[0]
    W += U @ np.diag(strengths) @ V.T
    values = _spectrum(W)
    fit = fit_mp(values, N, M)
    assert fit.n_spikes == len(strengths)
    predicted = sorted((1 + s**2) * (gamma + s**2) / s**2 for s in strengths)
    # At N = 2000 an outlier fluctuates by about 2% (O(N^-1/2)) around its limit: 6% is 3 sd.
    np.testing.assert_allclose(values[-len(strengths):], predicted, rtol=0.06)
    assert fit.scale == pytest.approx(1.0, rel=0.02)
    assert fit.ks_bulk < 0.05


@pytest.mark.parametrize("df", [1.5, 2.0])
def test_heavy_tailed_matrices_get_a_poor_mp_fit(df: float) -> None:
    """Student-t entries: the spectrum's centre may look MP-like, but far too much lies past the edge."""
    N, M = 1000, 500
    W = np.random.default_rng(1).standard_t(df, size=(N, M))
    fit = fit_mp(_spectrum(W), N, M)
    assert fit.ks_all > 0.1
    assert fit.n_spikes > 0.05 * M


def test_the_sigma2_interval_holds_the_entry_variance_of_gaussian_matrices() -> None:
    covered = 0
    for seed in range(40):
        W = 0.3 * np.random.default_rng(seed).standard_normal((400, 200))
        fit = fit_mp(np.linalg.eigvalsh(W.T @ W), 400, 200)
        assert fit.sigma2_low < fit.sigma2 < fit.sigma2_high
        covered += fit.sigma2_low <= 0.09 <= fit.sigma2_high
    assert covered >= 34  # nominal 95% for a mean of squared Gaussian entries; the edge's trimming widens the spread ~10%
