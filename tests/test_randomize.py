"""The randomization null (htmp_cli.fits.randomize, math.md section 6a): a layer against its entries shuffled."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from typer.testing import CliRunner

import htmp_cli
from htmp_cli.cli import app
from htmp_cli.fits.randomize import ks_two_sample
from htmp_cli.options import AnalysisOptions
from htmp_cli.layers import shuffle_generator
from htmp_cli.spectral import shuffled_entries


def _randomized(W: np.ndarray, seed: int = 0):  # type: ignore[no-untyped-def]
    return htmp_cli.analyze({"w": W.astype(np.float32)}, randomize=True, htmp=False, seed=seed).layers[0]


def test_gaussian_entries_give_no_traps_in_at_least_99_of_100_seeds():
    with_traps = [seed for seed in range(100)
                  if _randomized(np.random.default_rng(seed).standard_normal((300, 150)), seed).randomized.n_traps]
    assert len(with_traps) <= 1, with_traps


def test_student_t_entries_give_traps_and_their_tail_survives_shuffling():
    layers = [_randomized(np.random.default_rng(seed).standard_t(3, (300, 150)), seed) for seed in range(40)]
    assert sum(layer.randomized.n_traps > 0 for layer in layers) >= 38
    assert sum(bool(layer.randomized.tail_survives) for layer in layers) >= 36
    assert all(layer.randomized.ks_distance < 0.2 for layer in layers)  # the same entries, nearly the same ESD


def test_a_low_rank_plus_noise_layer_loses_its_tail_when_shuffled():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        W = rng.standard_normal((400, 200)) / np.sqrt(400)
        for k in range(10):
            u, v = rng.standard_normal(400), rng.standard_normal(200)
            W += (3 + k) * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
        layer = _randomized(W, seed)
        assert layer.mp.n_spikes >= 10
        result = layer.randomized
        assert result.n_traps == 0 and result.tail_survives is False and result.spikes_kept == 0
        assert result.lambda_max_ratio < 0.2  # the spikes are gone: what is left is the shuffled bulk


def test_the_shuffle_keeps_every_entry_and_the_trace_and_is_seeded_by_the_layer():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((50, 30))
    options = AnalysisOptions(seed=3)
    first = shuffled_entries(W, None, shuffle_generator(options, "a"))
    assert np.array_equal(np.sort(first.ravel()), np.sort(W.ravel())) and not np.array_equal(first, W)
    assert np.array_equal(first, shuffled_entries(W, None, shuffle_generator(options, "a")))
    assert not np.array_equal(first, shuffled_entries(W, None, shuffle_generator(options, "b")))
    assert not np.array_equal(first, shuffled_entries(W, None, shuffle_generator(AnalysisOptions(seed=4), "a")))
    layer = _randomized(W)
    assert layer.randomized.seed == 0
    again = _randomized(W)
    assert again.randomized == layer.randomized


def test_a_torch_tensor_is_shuffled_as_its_numpy_copy_would_be():
    torch = pytest.importorskip("torch")
    W = np.random.default_rng(2).standard_normal((40, 20)).astype(np.float32)
    from_numpy = shuffled_entries(W, None, np.random.default_rng(9))
    from_torch = shuffled_entries(torch.from_numpy(W), None, np.random.default_rng(9))
    assert np.array_equal(from_torch.numpy(), from_numpy)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's own p-value of one-point samples
@settings(max_examples=40, deadline=None)
@given(a=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=40),
       b=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=40))
def test_the_two_sample_ks_distance_is_scipys(a, b):
    assert ks_two_sample(np.array(a), np.array(b)) == pytest.approx(stats.ks_2samp(a, b, method="asymp").statistic, abs=1e-12)


def test_randomize_through_the_cli_json_table_and_round_trip(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    rng = np.random.default_rng(0)
    save_file({"t.weight": rng.standard_t(3, (300, 150)).astype(np.float32),
               "g.weight": rng.standard_normal((300, 150)).astype(np.float32)}, str(path))
    runner = CliRunner()
    result = runner.invoke(app, ["analyze", str(path), "--randomize", "--seed", "5", "-f", "json", "-o",
                                 str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["options"]["randomize"] is True and data["options"]["seed"] == 5
    by_name = {layer["name"]: layer for layer in data["layers"]}
    assert by_name["t.weight"]["randomized"]["n_traps"] > 0 and by_name["g.weight"]["randomized"]["n_traps"] == 0
    assert by_name["t.weight"]["phase"]["evidence"]["shuffled_traps"] == by_name["t.weight"]["randomized"]["n_traps"]
    report = htmp_cli.Report.from_json(tmp_path / "r.json")
    assert report.to_dict() == data
    table = runner.invoke(app, ["analyze", str(tmp_path / "r.json")], env={"COLUMNS": "220"})
    assert "shuffled" in table.output and "ks=" in table.output
    refused = runner.invoke(app, ["analyze", str(path), "--seed", "-1"])
    assert refused.exit_code == 2
