"""Degenerate matrices: each gives a defined result or a failed layer with a reason, and the other
layers of the checkpoint come out exactly as they would alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from conftest import run_htmp
from htmp_cli.options import AnalysisOptions
from htmp_cli.pipeline import analyze
from htmp_cli.results import report_to_dict

PRECISIONS = ("float64", "float32")


def _good(seed: int = 1) -> np.ndarray:
    """Gaussian with Pareto-scaled columns: a heavy tail the power-law fit takes hold of."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((300, 120)) * (1 + rng.pareto(2.5, 120))).astype(np.float32)


def _degenerate_tensors() -> dict[str, np.ndarray]:
    good = _good()
    rng = np.random.default_rng(2)
    nan, inf = good.copy(), good.copy()
    nan[3, 4] = np.nan
    inf[5, 6] = -np.inf
    return {
        "good": good,
        "zeros": np.zeros((300, 120), np.float32),
        "constant": np.full((300, 120), 0.5, np.float32),
        "rank_one": np.outer(rng.standard_normal(300), rng.standard_normal(120)).astype(np.float32),
        "nan": nan,
        "inf": inf,
        "denormal": good * np.float32(2.0**-140),  # float32 subnormals: 23 bits shrink to a few
        "scaled_down": good * np.float32(2.0**-100),  # about 1e-30, exactly
        "scaled_up": good * np.float32(2.0**100),  # about 1e30, exactly
        "e_minus_30": good * np.float32(1e-30),
        "e_plus_30": good * np.float32(1e30),
        "beyond_float64": good.astype(np.float64) * 1e300,  # its squares overflow float64
        "single_row": good[:1].copy(),
        "single_column": good[:, :1].copy(),
        "one_by_one": good[:1, :1].copy(),
    }


EXPECTED_FAILURES = {
    "zeros": "all zeros",
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "beyond_float64": "overflow float64",
    "single_row": "too few",
    "single_column": "too few",
    "one_by_one": "too few",
}


@pytest.fixture(scope="module")
def degenerate_file(tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("degenerate")
    save_file(_degenerate_tensors(), str(folder / "degenerate.safetensors"))
    save_file({"good": _good()}, str(folder / "good_alone.safetensors"))
    return folder


@pytest.fixture(scope="module", params=PRECISIONS)
def reports(request, degenerate_file):  # type: ignore[no-untyped-def]
    options = AnalysisOptions(min_dim=1, precision=request.param)
    together = analyze(degenerate_file / "degenerate.safetensors", options, jobs=1)
    alone = analyze(degenerate_file / "good_alone.safetensors", options, jobs=1)
    return {layer.name: layer for layer in together.layers}, alone.layers[0], together


def test_every_layer_is_defined_or_failed_with_a_reason(reports) -> None:  # type: ignore[no-untyped-def]
    layers, _, report = reports
    assert set(layers) == set(_degenerate_tensors())
    for name, layer in layers.items():
        if name in EXPECTED_FAILURES:
            assert layer.status == "failed", name
            assert EXPECTED_FAILURES[name] in layer.reason, (name, layer.reason)
        else:
            assert layer.status == "success", (name, layer.reason)
            assert layer.phase is not None and layer.metrics is not None, name
            for value in (layer.metrics.log_norm, layer.metrics.log_spectral_norm, layer.metrics.stable_rank):
                assert math.isfinite(value), name
    # The report is valid JSON without NaN or Infinity anywhere.
    json.dumps(report_to_dict(report), allow_nan=False)


def test_rank_deficient_matrices_are_rank_collapse(reports) -> None:  # type: ignore[no-untyped-def]
    layers, _, _ = reports
    for name in ("constant", "rank_one"):
        assert layers[name].phase.phase == "rank-collapse", name
        assert layers[name].n_zero == 119, name
        assert layers[name].mp.status == "failed", name


def test_other_layers_are_unaffected(reports) -> None:  # type: ignore[no-untyped-def]
    layers, alone, _ = reports
    good = layers["good"]
    assert good.power_law == alone.power_law
    assert good.metrics == alone.metrics
    assert good.mp == alone.mp and good.htmp == alone.htmp and good.phase == alone.phase


def test_power_of_two_scales_change_nothing_but_the_norms(reports) -> None:  # type: ignore[no-untyped-def]
    """2^-100 and 2^100 times a matrix: the squares leave float32's range, and htmp scales them back
    in by a power of two, so the spectrum is the same to the last bit, times 4^k."""
    layers, _, _ = reports
    good = layers["good"]
    for name, k in (("scaled_down", -100), ("scaled_up", 100)):
        layer = layers[name]
        assert layer.power_law.alpha == good.power_law.alpha, name
        assert layer.power_law.D == good.power_law.D, name
        assert layer.power_law.xmin == pytest.approx(good.power_law.xmin * 4.0**k, rel=1e-15), name
        assert layer.htmp.kappa == good.htmp.kappa, name
        assert layer.phase.phase == good.phase.phase, name
        # log_norm is log10 of the squared Frobenius norm: it moves by 2k log10(2).
        assert layer.metrics.log_norm - good.metrics.log_norm == pytest.approx(2 * k * math.log10(2), abs=1e-9)


def test_decimal_and_subnormal_scales_are_analysed(reports) -> None:  # type: ignore[no-untyped-def]
    layers, _, _ = reports
    good = layers["good"]
    for name, digits in (("e_minus_30", 1e-5), ("e_plus_30", 1e-5), ("denormal", 1e-3)):
        layer = layers[name]
        # float32 rounding of the scaled weights (subnormals keep only a few bits) moves alpha a little.
        assert layer.power_law.alpha == pytest.approx(good.power_law.alpha, rel=digits), name
        assert layer.phase.phase == good.phase.phase, name


@settings(max_examples=12, deadline=None)
@given(exponent=st.integers(min_value=-100, max_value=100), precision=st.sampled_from(PRECISIONS))
def test_spectrum_is_exactly_scale_covariant(exponent: int, precision: str) -> None:
    from htmp_cli.spectral import eigenvalues

    good = _good()
    base = eigenvalues(good, precision).eigenvalues
    scaled = eigenvalues(good * np.float32(2.0**exponent), precision).eigenvalues
    np.testing.assert_array_equal(scaled, np.ldexp(base, 2 * exponent))


def test_cli_analyses_degenerate_checkpoint_quietly(degenerate_file) -> None:  # type: ignore[no-untyped-def]
    """Exit 0, a failed row for each failure, and nothing on stderr: no RuntimeWarning leaks out."""
    for precision in PRECISIONS:
        done = run_htmp("analyze", str(degenerate_file / "degenerate.safetensors"), "--min-dim", "1",
                        "--precision", precision, "-f", "json", "--no-progress")
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        data = json.loads(done.stdout)
        failed = {layer["name"] for layer in data["layers"] if layer["status"] == "failed"}
        assert failed == set(EXPECTED_FAILURES)
        assert data["summary"]["n_failed_layers"] == len(EXPECTED_FAILURES)
