"""Eigenvector localisation (htmp_cli.fits.vectors) against the Haar baseline of math.md section 6."""

from __future__ import annotations

import numpy as np
import pytest

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


@pytest.mark.parametrize("shape", [(200, 64), (500, 128), (300, 300), (1000, 96)])
def test_gaussian_layers_have_fewer_than_one_percent_of_vectors_localised(shape):
    # Over the vectors of ten matrices per shape: the rule flags 0.1% of random vectors, so one layer
    # of 64 has a flagged vector 6% of the time; a bound on one layer's share would be a coin toss.
    flagged = total = 0
    for seed in range(10):
        W = np.random.default_rng([seed, *shape]).standard_normal(shape)
        _, vectors = np.linalg.eigh(W.T @ W)
        stats = vector_stats(vectors)
        flagged, total = flagged + stats.n_localised, total + stats.count
    assert flagged < 0.01 * total


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


# --- Through the analysis: the solve keeps each eigenvector's IPR and entropy, the fits group them ---

import json  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

import htmp_cli  # noqa: E402
from htmp_cli.cli import app  # noqa: E402
from htmp_cli.fits.vectors import stats_of  # noqa: E402
from htmp_cli.spectral import eigenvalues, pool_spectra  # noqa: E402


def _planted(seed: int, N: int = 1200, M: int = 300, planted: tuple[int, ...] = (5, 77, 150, 222)) -> np.ndarray:
    """Gaussian noise plus spikes s * u e_i^T: the Gram side's eigenvectors of the spikes are the basis vectors e_i."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, M)) / np.sqrt(N)
    for k, column in enumerate(planted):
        u = rng.standard_normal(N)
        W += (5.0 + k) * np.outer(u / np.linalg.norm(u), np.eye(M)[column])
    return W


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_solve_keeps_each_eigenvectors_localisation_in_the_eigenvalues_order(backend):
    W = _planted(1)
    spectrum = eigenvalues(W, backend=backend, vectors=True)
    values, vectors = np.linalg.eigh(W.T @ W)
    assert np.allclose(spectrum.eigenvalues, values, rtol=1e-10, atol=1e-12)
    assert np.allclose(spectrum.vector_ipr, ipr(vectors), rtol=1e-8)
    assert np.allclose(spectrum.vector_entropy, entropy(vectors), rtol=1e-8)
    # A wide matrix is solved on its other side: the same n = M vectors.
    wide = eigenvalues(W.T, backend=backend, vectors=True)
    assert np.allclose(wide.vector_ipr, spectrum.vector_ipr, rtol=1e-6)
    plain = eigenvalues(W, backend=backend)
    assert plain.vector_ipr is None and np.array_equal(plain.eigenvalues, spectrum.eigenvalues) is not None


def test_pooled_slices_keep_each_vector_with_its_eigenvalue():
    rng = np.random.default_rng(2)
    slices = [eigenvalues(rng.standard_normal((40, 30)) * (k + 1), vectors=True) for k in range(3)]
    pooled = pool_spectra(slices)
    pairs = sorted((v, i) for s in slices for v, i in zip(s.eigenvalues, s.vector_ipr))
    assert np.allclose(pooled.eigenvalues, [v for v, _ in pairs])
    assert np.allclose(pooled.vector_ipr, [i for _, i in pairs])


@pytest.mark.parametrize("shape", [(400, 100), (256, 256), (100, 900), (2000, 64)])
def test_gaussian_layers_analysed_with_vectors_flag_fewer_than_one_percent(shape):
    W = np.random.default_rng(shape[0]).standard_normal(shape).astype(np.float32)
    layer = htmp_cli.analyze({"w": W}, vectors=True, htmp=False).layers[0]
    evidence = layer.vectors
    assert evidence is not None and evidence.n == min(shape)
    assert evidence.bulk is not None and evidence.bulk.count + (evidence.spikes.count if evidence.spikes else 0) == min(shape)
    assert evidence.n_localised <= 0.01 * min(shape)
    assert abs(evidence.bulk.entropy_z) < 5 and abs(evidence.bulk.ipr_z) < 5


def test_a_layer_with_planted_localised_spikes_has_exactly_those_tail_vectors_flagged():
    layer = htmp_cli.analyze({"w": _planted(4)}, vectors=True, htmp=False).layers[0]
    evidence = layer.vectors
    assert evidence.spikes is not None and evidence.spikes.count == 4 and evidence.spikes.n_localised == 4
    assert evidence.tail is not None and evidence.tail.n_localised == 4  # the spikes, and none of the rest
    assert evidence.bulk.n_localised <= 0.01 * evidence.bulk.count  # the rule's false alarms only
    assert evidence.tail_entropy_z < -5  # the tail's four basis vectors pull its mean entropy far below Haar's
    # The kept IPRs (for the figure) flag the four largest eigenvalues' vectors, and the bulk's false alarms.
    flagged = set(np.flatnonzero(layer.vector_ipr > evidence.threshold))
    top = set(range(layer.n_eigenvalues - 4, layer.n_eigenvalues))
    assert top <= flagged and len(flagged - top) == evidence.bulk.n_localised


def test_the_evidence_is_the_same_from_its_parts():
    rng = np.random.default_rng(5)
    iprs, entropies = rng.uniform(0.01, 0.03, 50), rng.uniform(3.0, 4.0, 50)
    stats = stats_of(100, iprs, entropies)
    assert stats.count == 50 and stats.mean_ipr == pytest.approx(iprs.mean())
    assert stats.mean_q_pt == pytest.approx(((iprs - 3 / 102) / (1 - 3 / 102)).mean())


def test_vectors_through_the_cli_json_table_and_round_trip(tmp_path):
    runner = CliRunner()
    path = tmp_path / "m.safetensors"
    from safetensors.numpy import save_file

    save_file({"planted.weight": _planted(6).astype(np.float32),
               "plain.weight": np.random.default_rng(0).standard_normal((300, 120)).astype(np.float32)}, str(path))
    plain = runner.invoke(app, ["analyze", str(path), "-f", "json"])
    assert plain.exit_code == 0, plain.output
    assert all(layer["vectors"] is None for layer in json.loads(plain.output)["layers"])
    result = runner.invoke(app, ["analyze", str(path), "--vectors", "-f", "json", "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["options"]["vectors"] is True
    planted = next(layer for layer in data["layers"] if layer["name"] == "planted.weight")
    assert planted["vectors"]["tail"]["n_localised"] == 4 and planted["vectors"]["spikes"]["count"] == 4
    report = htmp_cli.Report.from_json(tmp_path / "r.json")
    assert report.layer("planted.weight").vectors.tail.n_localised == 4
    assert report.to_dict() == data
    table = runner.invoke(app, ["analyze", str(tmp_path / "r.json")], env={"COLUMNS": "200"})
    assert "localised" in table.output and "4/" in table.output and "z=" in table.output
    plain_table = runner.invoke(app, ["analyze", str(path)], env={"COLUMNS": "200"})
    assert "localised" not in plain_table.output
    frame = report.to_dataframe()
    assert frame.set_index("name").loc["planted.weight", "tail_localised"] == 4
