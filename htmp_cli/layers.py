"""One matrix, from its stored values to its layer result: the solve (Gram product and eigenvalues)
and the fits (power-law tail, scale metrics, Marchenko-Pastur, HTMP, phase)."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import numpy as np

from htmp_cli.device import device_for
from htmp_cli.fits.farms import DEFAULT_WINDOW, farms_result
from htmp_cli.fits.htmp import HTMPFit, better_fit, fit_htmp
from htmp_cli.fits.metrics import ScaleMetrics, scale_metrics
from htmp_cli.fits.mp import MIN_EIGENVALUES, MPFit, fit_mp
from htmp_cli.fits.phases import PhaseResult, classify, exponential_tail
from htmp_cli.fits.powerlaw import PowerLawFit, fit_power_law, fit_power_law_ww
from htmp_cli.fits.randomize import RandomizationResult, randomization_result
from htmp_cli.fits.tailtests import TailTests, tail_tests
from htmp_cli.fits.vectors import VectorEvidence, eigenvector_evidence
from htmp_cli.loaders.matrices import LowRankFactors, MatrixSpec
from htmp_cli.loaders.pytorch import stored_from_tensor
from htmp_cli.options import AnalysisOptions
from htmp_cli.results import LayerResult, LayerTimings
from htmp_cli.spectral import (Decoder, NonFiniteMatrixError, Spectrum, WindowSpectra, gram_matrix, is_torch_tensor,
                               low_rank_spectrum, pool_spectra, shuffled_entries, spectrum_of, window_spectra)

# WeightWatcher's names for the two ends of the alpha scale (math.md section 2).
ALPHA_OVER_TRAINED = 2.0
ALPHA_UNDER_TRAINED = 6.0


@dataclass(frozen=True)
class SpectrumAnalysis:
    """Every fit and metric of one spectrum: what `analyze_matrix` adds to the shape and timings."""

    power_law: PowerLawFit
    metrics: ScaleMetrics
    mp: MPFit
    htmp: HTMPFit | None
    htmp_inverse: HTMPFit | None
    phase: PhaseResult
    warnings: tuple[str, ...]
    vectors: VectorEvidence | None = None
    randomized: RandomizationResult | None = None
    tail_tests: TailTests | None = None


def _as_float32(block: np.ndarray) -> np.ndarray:
    return block.astype(np.float32)


@dataclass(frozen=True)
class SolvedMatrix:
    """One matrix's spectrum, or why it has none, and the seconds it took to read and to solve;
    with --randomize, the spectrum of its entries shuffled too."""

    spec: MatrixSpec
    spectrum: Spectrum | None
    failure: str | None  # the reason there is no spectrum
    read_seconds: float
    eigen_seconds: float
    shuffled: Spectrum | None = None
    windows: WindowSpectra | None = None  # --farms


def shuffle_generator(options: AnalysisOptions, name: str) -> np.random.Generator:
    """The permutation source of one layer: the analysis seed and the layer's name, so that a layer
    is shuffled the same way in every run, process and order."""
    return np.random.default_rng([options.seed, zlib.crc32(name.encode("utf-8"))])


def solve_matrix(spec: MatrixSpec, load: Callable[[], tuple[np.ndarray, Decoder | None]],
                 options: AnalysisOptions) -> SolvedMatrix:
    """The eigenvalue spectrum of one matrix. Never raises for bad numbers: it fails the layer.

    `load` returns the stored values and their decoder to floats. Loading here, rather than taking
    an array, means the only reference to the weights is local: they are freed as soon as the Gram
    matrix exists, before the eigensolve allocates its own copy.
    """
    started = time.perf_counter()
    W, decode = load()
    read_seconds = time.perf_counter() - started
    if isinstance(W, LowRankFactors):
        return _solved_low_rank(spec, W, options, read_seconds)
    if options.fit == "ww" and decode is None and W.dtype == np.float64:
        decode = _as_float32  # WeightWatcher 0.7.7 analyses float32 copies of the weights
    t0 = time.perf_counter()
    device = device_for(options.device, options.backend, min(spec.shape))
    torch_device = None if device == "cpu" else device  # the CPU's own path is numpy and scipy
    if is_torch_tensor(W):  # a model's tensor on a GPU: computed there unless told otherwise
        if options.device == "cpu" or options.backend == "numpy":
            W, decode = stored_from_tensor(W.detach().cpu())
        else:
            torch_device = str(W.device)
    try:
        shuffled = None
        if options.randomize:  # first: the weights are let go once their own Gram matrix exists
            shuffled = _solved([shuffled_entries(W, decode, shuffle_generator(options, spec.name))], None,
                               options, torch_device, vectors=False)
        windows = None
        if options.farms and W.ndim == 2:  # conv kernels are pooled slices already: no windows of them
            window = min(options.farms_window or DEFAULT_WINDOW, *W.shape)
            windows = window_spectra(W, decode, window, options.farms_grid, options.precision, options.backend,
                                     torch_device)
        held = [W]
        del W
        spectrum = _solved(held, decode, options, torch_device, options.vectors)
    except NonFiniteMatrixError as err:
        return SolvedMatrix(spec, None, str(err), read_seconds, time.perf_counter() - t0)
    if options.fit == "ww" and spec.kind == "conv2d":
        # WeightWatcher 0.7.7 scales pooled Conv2D slices by sqrt(1/2) (its conv2d_norm), halving
        # every eigenvalue; only its reproduction mode copies that (README: "Conv kernels").
        spectrum = _halved(spectrum)
        shuffled = _halved(shuffled) if shuffled is not None else None
    return SolvedMatrix(spec, spectrum, None, read_seconds, time.perf_counter() - t0, shuffled, windows)


def _solved_low_rank(spec: MatrixSpec, factors: LowRankFactors, options: AnalysisOptions,
                     read_seconds: float) -> SolvedMatrix:
    """A low-rank update's spectrum from its factors (spectral.low_rank_spectrum), never the product.
    The evidence options that need the matrix itself are not applied, and the note says so."""
    t0 = time.perf_counter()
    try:
        spectra = [low_rank_spectrum(factors.B, a, factors.scale, options.precision) for a in factors.A]
    except NonFiniteMatrixError as err:
        return SolvedMatrix(spec, None, str(err), read_seconds, time.perf_counter() - t0)
    spectrum = spectra[0] if len(spectra) == 1 else pool_spectra(spectra)
    left_out = [flag for flag, asked in (("--vectors", options.vectors), ("--randomize", options.randomize),
                                         ("--farms", options.farms)) if asked]
    if left_out:
        spec = replace(spec, note=f"{spec.note}; {', '.join(left_out)} not applied: they need the update formed")
    return SolvedMatrix(spec, spectrum, None, read_seconds, time.perf_counter() - t0)


def _halved(spectrum: Spectrum) -> Spectrum:
    return replace(spectrum, eigenvalues=spectrum.eigenvalues / 2, zero_threshold=spectrum.zero_threshold / 2)


def _solved(held: list[np.ndarray], decode: Decoder | None, options: AnalysisOptions, torch_device: str | None,
            vectors: bool) -> Spectrum:
    """The spectrum of the one matrix in `held` (a conv kernel's slices pooled), which is taken out
    of it so that it is freed as soon as its Gram matrix exists."""
    W = held.pop()
    if W.ndim == 3:  # conv kernel slices, one spectrum each, pooled
        spectrum = pool_spectra([spectrum_of(gram_matrix(W[k], options.precision, decode, torch_device),
                                             options.backend, vectors) for k in range(W.shape[0])])
        del W
        return spectrum
    gram = gram_matrix(W, options.precision, decode, torch_device)
    del W
    return spectrum_of(gram, options.backend, vectors)


def fit_matrix(solved: SolvedMatrix, options: AnalysisOptions, keep_eigenvalues: bool = False) -> LayerResult:
    """The layer result of a solved matrix: its fits, metrics and phase."""
    spec, spectrum = solved.spec, solved.spectrum
    rows, cols = spec.shape
    layer = partial(LayerResult, name=spec.name, tensor=spec.tensor, kind=spec.kind, dtype=spec.dtype,
                    shape=spec.shape, N=max(rows, cols), M=min(rows, cols), slices=spec.slices, group=spec.group,
                    note=spec.note, aliases=spec.entry.aliases,
                    update_rank=spec.update_rank)
    unfitted = LayerTimings(solved.read_seconds, solved.eigen_seconds, 0.0)
    if spectrum is None:
        return layer(status="failed", reason=solved.failure, timings=unfitted)
    layer = partial(layer, precision=spectrum.precision, backend=spectrum.backend,
                    n_eigenvalues=spectrum.eigenvalues.size, n_zero=spectrum.n_zero, n_clamped=spectrum.n_clamped)
    if spectrum.lambda_max <= 0:
        return layer(status="failed", reason="matrix is all zeros", timings=unfitted)
    if spectrum.eigenvalues.size < MIN_EIGENVALUES:
        return layer(status="failed", reason=f"{spectrum.eigenvalues.size} eigenvalue(s): too few for the spectral "
                                             f"fits (they need at least {MIN_EIGENVALUES})", timings=unfitted)
    started = time.perf_counter()
    analysis = spectrum_analysis(spectrum, options, solved.shuffled)
    if spec.update_rank is not None and not analysis.power_law.ok and analysis.power_law.n_fitted < options.min_tail:
        analysis = replace(analysis, power_law=replace(
            analysis.power_law, reason=f"LoRA rank {spec.update_rank}: the update has {analysis.power_law.n_fitted} non-zero "
                                       f"eigenvalues, fewer than the {options.min_tail} a tail fit needs (--min-tail)"))
    farms = None
    if solved.windows is not None:
        windows = solved.windows
        farms = farms_result(windows.eigenvalues, windows.window, windows.grid, windows.n_windows,
                             precision=spectrum.precision, min_tail=options.min_tail, htmp=options.htmp,
                             window_cut=options.farms_window is not None and windows.window < options.farms_window)
    return layer(status="success", power_law=analysis.power_law, metrics=analysis.metrics, mp=analysis.mp,
                 htmp=analysis.htmp, htmp_inverse=analysis.htmp_inverse, phase=analysis.phase,
                 warnings=analysis.warnings, vectors=analysis.vectors, randomized=analysis.randomized,
                 tail_tests=analysis.tail_tests, farms=farms,
                 eigenvalues=spectrum.eigenvalues if keep_eigenvalues else None,
                 vector_ipr=spectrum.vector_ipr if keep_eigenvalues else None,
                 shuffled_eigenvalues=solved.shuffled.eigenvalues if keep_eigenvalues and solved.shuffled else None,
                 timings=LayerTimings(solved.read_seconds, solved.eigen_seconds, time.perf_counter() - started))


def analyze_matrix(spec: MatrixSpec, load: Callable[[], tuple[np.ndarray, Decoder | None]],
                   options: AnalysisOptions, keep_eigenvalues: bool = False) -> LayerResult:
    """Spectrum, tail fit and metrics of one matrix (see `solve_matrix` for `load`)."""
    return fit_matrix(solve_matrix(spec, load, options), options, keep_eigenvalues)


def _tail_fit(spectrum: Spectrum, options: AnalysisOptions) -> PowerLawFit:
    if options.fit == "ww":
        return fit_power_law_ww(spectrum.eigenvalues)
    return fit_power_law(spectrum.nonzero, min_tail=options.min_tail)


def spectrum_analysis(spectrum: Spectrum, options: AnalysisOptions, shuffled: Spectrum | None = None) -> SpectrumAnalysis:
    """Tail fit, scale metrics, MP bulk, HTMP (both orientations) and phase of one spectrum; and
    with the spectrum of its entries shuffled (--randomize), the comparison of the two."""
    nonzero = spectrum.nonzero
    fit = _tail_fit(spectrum, options)
    count = spectrum.eigenvalues.size  # M, or M per slice times the slices of a pooled conv kernel
    metrics = scale_metrics(spectrum.eigenvalues, nonzero, count, fit.alpha)
    mp = fit_mp(spectrum.eigenvalues, spectrum.N, spectrum.M)
    gamma = spectrum.M / spectrum.N
    direct = fit_htmp(nonzero, gamma, "direct") if options.htmp else None
    inverse = fit_htmp(nonzero, gamma, "inverse") if options.htmp else None
    best = better_fit(direct, inverse)
    phase = classify(spectrum.eigenvalues, count, metrics.rank_loss, fit, mp, direct, options.thresholds,
                     best.kappa if best is not None else None)
    warnings = []
    if fit.ok and fit.alpha < ALPHA_OVER_TRAINED:
        warnings.append("over-trained")
    if fit.ok and fit.alpha > ALPHA_UNDER_TRAINED:
        warnings.append("under-trained")
    vectors = None
    if spectrum.vector_ipr is not None and spectrum.vector_entropy is not None:
        vectors = eigenvector_evidence(spectrum.eigenvalues, spectrum.vector_ipr, spectrum.vector_entropy, spectrum.M,
                                       xmin=fit.xmin if fit.ok else None, spike_threshold=mp.spike_threshold,
                                       zero_threshold=spectrum.zero_threshold)
    randomized = None
    if shuffled is not None:
        randomized = randomization_result(spectrum.eigenvalues, shuffled.eigenvalues, options.seed, mp,
                                          _tail_fit(shuffled, options), fit_mp(shuffled.eigenvalues, shuffled.N, shuffled.M))
        if randomized.tail_survives and phase.phase in ("heavy-tailed", "bulk-decay"):
            # A tail of heavy-tailed entries, not of learned correlations: the phase says so.
            phase = replace(phase, summary=f"{phase.summary}; the tail survives shuffling "
                                           f"({randomized.n_traps} traps for {mp.n_spikes} spikes)")
        phase = replace(phase, evidence={**phase.evidence, "shuffled_traps": randomized.n_traps,
                                         "shuffled_spikes_kept": randomized.spikes_kept})
    tests = None
    if options.bootstrap or options.alternatives:
        tests = tail_tests(nonzero, fit, bootstrap=options.bootstrap, alternatives=options.alternatives,
                           seed=options.seed, min_tail=options.min_tail)
        if tests is not None and tests.favoured == "exponential" and phase.phase == "heavy-tailed":
            phase = exponential_tail(phase, tests.comparison("exponential"))
    return SpectrumAnalysis(power_law=fit, metrics=metrics, mp=mp, htmp=direct, htmp_inverse=inverse,
                            phase=phase, warnings=tuple(warnings), vectors=vectors, randomized=randomized,
                            tail_tests=tests)


