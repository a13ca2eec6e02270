"""The phase classifier on synthetic layers of every phase, and its thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from htmp_cli.cli import app
from htmp_cli.errors import OptionError
from htmp_cli.fits.phases import PHASES, PhaseThresholds
from htmp_cli.options import AnalysisOptions
from htmp_cli.layers import spectrum_analysis
from htmp_cli.spectral import Spectrum, eigenvalues
from htmp_cli.synthetic import htmp_sample, phase_layer


@pytest.mark.parametrize("phase", PHASES)
def test_each_phase_is_recognised_on_fresh_synthetic_layers(phase: str) -> None:
    """At least 90% of fresh layers of each phase get their phase (the calibration's bar)."""
    rng = np.random.default_rng(PHASES.index(phase) + 777)
    hits = htmp_hits = 0
    total = 20
    for _ in range(total):
        N = int(rng.integers(400, 1201))
        M = int(rng.integers(100, N + 1))
        analysis = spectrum_analysis(eigenvalues(phase_layer(phase, N, M, rng), backend="numpy"), AnalysisOptions())
        hits += analysis.phase.phase == phase
        htmp_hits += analysis.phase.htmp_phase == phase
        assert analysis.phase.summary.split(":")[0] in (analysis.phase.phase, "very heavy-tailed")
        assert analysis.phase.rule
        assert ("HTMP view:" in analysis.phase.summary) == (analysis.phase.views_agree is False)
    assert hits >= 0.9 * total, f"{phase}: {hits}/{total}"
    assert htmp_hits >= 0.9 * total, f"{phase} in the HTMP view: {htmp_hits}/{total}"


@pytest.mark.parametrize(("phase", "kappa"), [("bulk-decay", 5.5), ("heavy-tailed", 1.9), ("rank-collapse", 1e-3)])
def test_htmp_spectra_at_the_papers_kappas_get_the_papers_phase_in_the_htmp_view(phase: str, kappa: float) -> None:
    """HTMP samples at the kappas of the HTMP paper's Figure 2, at four aspect ratios: the HTMP view
    names the paper's phase for at least 90%; the headline calls the kappa-1.9 ones bulk-decay (their
    direct law's upper tail is Gamma-like, so alpha is large), which the layer says."""
    rng = np.random.default_rng(int(kappa * 1000) + 5)
    hits = total = 0
    for gamma in (0.1, 0.3255, 0.5, 1.0):
        for _ in range(5):
            M = int(rng.integers(200, 801))
            N = int(round(M / gamma))
            values = np.sort(htmp_sample(M, kappa, gamma, rng) * N)
            threshold = M * float(np.finfo(np.float64).eps) * float(values[-1])
            spectrum = Spectrum(eigenvalues=values, N=N, M=M, precision="float64", backend="numpy",
                                zero_threshold=threshold, n_zero=int((values < threshold).sum()), n_clamped=0)
            result = spectrum_analysis(spectrum, AnalysisOptions()).phase
            hits += result.htmp_phase == phase
            total += 1
            if phase == "heavy-tailed" and result.phase == "bulk-decay":
                assert result.views_agree is False and "HTMP view: heavy-tailed" in result.summary
    assert hits >= 0.9 * total, f"{phase}: {hits}/{total}"


def test_the_result_carries_the_rule_and_numbers() -> None:
    rng = np.random.default_rng(3)
    W = rng.standard_t(1.7, size=(1000, 500)) / np.sqrt(1000)
    phase = spectrum_analysis(eigenvalues(W), AnalysisOptions()).phase
    assert phase.phase == "heavy-tailed"
    assert phase.summary.startswith(("heavy-tailed: alpha", "very heavy-tailed: alpha"))
    assert {"alpha", "kappa", "lambda_max_over_l_plus", "ks_mp_all", "n_spikes"} <= set(phase.evidence)


def test_thresholds_are_validated_and_overridable() -> None:
    with pytest.raises(OptionError, match="unknown phase threshold 'alpha_heavyy'"):
        PhaseThresholds.from_mapping({"alpha_heavyy": 3})
    with pytest.raises(OptionError, match="non-negative number"):
        PhaseThresholds.from_mapping({"alpha_heavy": -1})
    assert PhaseThresholds.from_mapping({"alpha_heavy": 3}).alpha_heavy == 3.0


def test_threshold_option_changes_the_verdict(fixtures) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    path = str(fixtures / "demo_model.safetensors")
    default = json.loads(runner.invoke(app, ["analyze", path, "-f", "json"]).output)
    strict = json.loads(runner.invoke(app, ["analyze", path, "-f", "json", "--threshold", "alpha_heavy=0.5",
                                            "--threshold", "rank_loss_fraction=0"]).output)
    assert strict["options"]["thresholds"]["alpha_heavy"] == 0.5
    assert [l["phase"]["phase"] for l in default["layers"]] != [l["phase"]["phase"] for l in strict["layers"]]
    bad = runner.invoke(app, ["analyze", path, "--threshold", "nope"])
    assert bad.exit_code == 2


def test_a_layer_no_rule_fits_is_unclassified_with_its_numbers_not_random_like() -> None:
    """A spectrum without spikes whose bulk MP does not fit (the GGUF attention-value layers of the
    issue: KS to MP 0.14-0.24) is no evidence of an untrained layer."""
    from dataclasses import replace

    from htmp_cli.fits.phases import UNCLASSIFIED, classify

    rng = np.random.default_rng(21)
    values = eigenvalues(phase_layer("random-like", 800, 400, rng), backend="numpy")
    fits = spectrum_analysis(values, AnalysisOptions())
    assert fits.phase.phase == "random-like"  # as drawn; now let its MP fit be poor and spike-free
    poor = replace(fits.mp, ks_bulk=0.2, ks_all=0.2, n_spikes=0)
    phase = classify(values.eigenvalues, 400, 0, fits.power_law, poor, fits.htmp)
    assert phase.phase == UNCLASSIFIED and phase.rule == "no rule held"
    assert phase.summary.startswith("unclassified: no spikes, bulk KS 0.2, KS to MP 0.2, alpha ")
    assert phase.evidence["ks_mp_all"] == 0.2
