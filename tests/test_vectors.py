"""Eigenvector localisation (htmp_cli.fits.vectors) against the Haar baseline of math.md section 6."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from htmp_cli.fits.vectors import (FALSE_ALARM, entropy, haar_ipr_quantile, haar_moments, ipr, vector_stats)


def _haar(n: int, count: int, seed: int) -> np.ndarray:
    draws = np.random.default_rng(seed).standard_normal((n, count))
    return draws / np.linalg.norm(draws, axis=0)


@pytest.mark.parametrize("n", [100, 1000])
def test_the_haar_means_and_spreads_match_many_samples_to_three_digits(n):
    count = 200_000 if n == 100 else 30_000
    vectors = _haar(n, count, seed=n)
    haar = haar_moments(n)
    iprs, entropies = ipr(vectors), entropy(vectors)
    # Within 4 standard errors of the exact means (a standard error is below 4e-4 of each mean here),
    # and the spreads within 2%.
    assert abs(iprs.mean() - haar.ipr_mean) <= 4 * haar.ipr_sd / np.sqrt(count)
    assert abs(entropies.mean() - haar.entropy_mean) <= 4 * entropies.std() / np.sqrt(count)
    assert iprs.std() == pytest.approx(haar.ipr_sd, rel=2e-2)
    stats = vector_stats(vectors[:, :5000])
    assert abs(stats.ipr_z) < 4 and abs(stats.entropy_z) < 4 and abs(stats.mean_q_pt) < 0.01


def test_math_md_reference_values():
    for n, value in ((100, 3.886), (1000, 6.179), (4096, 7.588)):  # math.md, rounded
        assert haar_moments(n).entropy_mean == pytest.approx(value, abs=6e-4)
    # math.md's simulated sd(n IPR): 0.155 and 0.077 at n = 1000 and 4096 agree with the exact
    # variance; its 0.48 at n = 100 does not: the exact value is 0.455, and 400,000 draws give 0.4552.
    for n, sd in ((100, 0.455), (1000, 0.155), (4096, 0.077)):
        assert n * haar_moments(n).ipr_sd == pytest.approx(sd, abs=0.002)


@pytest.mark.parametrize("n", [16, 1024])
def test_the_localisation_rule_flags_the_same_share_of_haar_vectors_at_every_n(n):
    # Fresh draws (another seed than the quantile's): the share flagged is the rule's false-alarm rate.
    flagged = (ipr(_haar(n, 40_000 if n == 16 else 20_000, seed=7 + n)) > haar_ipr_quantile(n)).mean()
    assert FALSE_ALARM / 3 <= flagged <= FALSE_ALARM * 3


@settings(max_examples=6, deadline=None)
@given(shape=st.sampled_from([(200, 64), (500, 128), (300, 300), (1000, 96)]), seed=st.integers(0, 2**16))
def test_gaussian_layers_have_fewer_than_one_percent_of_vectors_localised(shape, seed):
    W = np.random.default_rng(seed).standard_normal(shape)
    _, vectors = np.linalg.eigh(W.T @ W)
    stats = vector_stats(vectors)
    assert stats.n_localised <= 0.01 * stats.count


def test_planted_localised_spikes_are_exactly_the_vectors_flagged():
    rng = np.random.default_rng(3)
    N, M, planted = 800, 200, (5, 77, 150)
    W = rng.standard_normal((N, M)) / np.sqrt(N)
    for k, column in enumerate(planted):
        u = rng.standard_normal(N)
        W += (4.0 + k) * np.outer(u / np.linalg.norm(u), np.eye(M)[column])
    values, vectors = np.linalg.eigh(W.T @ W)
    flagged = ipr(vectors) > haar_ipr_quantile(M)
    assert set(np.flatnonzero(flagged)) == {M - 3, M - 2, M - 1}  # the three largest: the spikes
    assert {int(np.argmax(np.abs(vectors[:, k]))) for k in np.flatnonzero(flagged)} == set(planted)
    assert vector_stats(vectors).n_localised == 3


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="n x k array"):
        vector_stats(np.ones(5))
    with pytest.raises(ValueError, match="n >= 2"):
        haar_moments(1)
