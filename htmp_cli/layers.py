"""One matrix, from its stored values to its layer result: the solve (Gram product and eigenvalues)
and the fits (power-law tail, scale metrics, Marchenko-Pastur, HTMP, phase)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import numpy as np

from htmp_cli.device import device_for
from htmp_cli.fits.htmp import HTMPFit, fit_htmp
from htmp_cli.fits.metrics import ScaleMetrics, scale_metrics
from htmp_cli.fits.mp import MIN_EIGENVALUES, MPFit, fit_mp
from htmp_cli.fits.phases import PhaseResult, classify
from htmp_cli.fits.powerlaw import PowerLawFit, fit_power_law, fit_power_law_ww
from htmp_cli.fits.vectors import VectorEvidence, eigenvector_evidence
from htmp_cli.loaders.matrices import MatrixSpec
from htmp_cli.loaders.pytorch import stored_from_tensor
from htmp_cli.options import AnalysisOptions
from htmp_cli.results import LayerResult, LayerTimings
from htmp_cli.spectral import (Decoder, NonFiniteMatrixError, Spectrum, gram_matrix, is_torch_tensor, pool_spectra,
                               spectrum_of)

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


def _as_float32(block: np.ndarray) -> np.ndarray:
    return block.astype(np.float32)


@dataclass(frozen=True)
class SolvedMatrix:
    """One matrix's spectrum, or why it has none, and the seconds it took to read and to solve."""

    spec: MatrixSpec
    spectrum: Spectrum | None
    failure: str | None  # the reason there is no spectrum
    read_seconds: float
    eigen_seconds: float


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
        if W.ndim == 3:  # conv kernel slices, one spectrum each, pooled
            spectrum = pool_spectra([spectrum_of(gram_matrix(W[k], options.precision, decode, torch_device),
                                                 options.backend, options.vectors) for k in range(W.shape[0])])
            del W
        else:
            gram = gram_matrix(W, options.precision, decode, torch_device)
            del W
            spectrum = spectrum_of(gram, options.backend, options.vectors)
            del gram
    except NonFiniteMatrixError as err:
        return SolvedMatrix(spec, None, str(err), read_seconds, time.perf_counter() - t0)
    if options.fit == "ww" and spec.kind == "conv2d":
        # WeightWatcher 0.7.7 scales pooled Conv2D slices by sqrt(1/2) (its conv2d_norm), halving
        # every eigenvalue; only its reproduction mode copies that (README: "Conv kernels").
        spectrum = replace(spectrum, eigenvalues=spectrum.eigenvalues / 2, zero_threshold=spectrum.zero_threshold / 2)
    return SolvedMatrix(spec, spectrum, None, read_seconds, time.perf_counter() - t0)


def fit_matrix(solved: SolvedMatrix, options: AnalysisOptions, keep_eigenvalues: bool = False) -> LayerResult:
    """The layer result of a solved matrix: its fits, metrics and phase."""
    spec, spectrum = solved.spec, solved.spectrum
    rows, cols = spec.shape
    layer = partial(LayerResult, name=spec.name, tensor=spec.tensor, kind=spec.kind, dtype=spec.dtype,
                    shape=spec.shape, N=max(rows, cols), M=min(rows, cols), slices=spec.slices, group=spec.group,
                    note=spec.note, aliases=spec.entry.aliases)
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
    analysis = spectrum_analysis(spectrum, options)
    return layer(status="success", power_law=analysis.power_law, metrics=analysis.metrics, mp=analysis.mp,
                 htmp=analysis.htmp, htmp_inverse=analysis.htmp_inverse, phase=analysis.phase,
                 warnings=analysis.warnings, vectors=analysis.vectors,
                 eigenvalues=spectrum.eigenvalues if keep_eigenvalues else None,
                 vector_ipr=spectrum.vector_ipr if keep_eigenvalues else None,
                 timings=LayerTimings(solved.read_seconds, solved.eigen_seconds, time.perf_counter() - started))


def analyze_matrix(spec: MatrixSpec, load: Callable[[], tuple[np.ndarray, Decoder | None]],
                   options: AnalysisOptions, keep_eigenvalues: bool = False) -> LayerResult:
    """Spectrum, tail fit and metrics of one matrix (see `solve_matrix` for `load`)."""
    return fit_matrix(solve_matrix(spec, load, options), options, keep_eigenvalues)


def spectrum_analysis(spectrum: Spectrum, options: AnalysisOptions) -> SpectrumAnalysis:
    """Tail fit, scale metrics, MP bulk, HTMP (both orientations) and phase of one spectrum."""
    nonzero = spectrum.nonzero
    if options.fit == "ww":
        fit = fit_power_law_ww(spectrum.eigenvalues)
    else:
        fit = fit_power_law(nonzero, min_tail=options.min_tail)
    count = spectrum.eigenvalues.size  # M, or M per slice times the slices of a pooled conv kernel
    metrics = scale_metrics(spectrum.eigenvalues, nonzero, count, fit.alpha)
    mp = fit_mp(spectrum.eigenvalues, spectrum.N, spectrum.M)
    gamma = spectrum.M / spectrum.N
    direct = fit_htmp(nonzero, gamma, "direct") if options.htmp else None
    inverse = fit_htmp(nonzero, gamma, "inverse") if options.htmp else None
    phase = classify(spectrum.eigenvalues, count, metrics.rank_loss, fit, mp, direct, options.thresholds)
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
    return SpectrumAnalysis(power_law=fit, metrics=metrics, mp=mp, htmp=direct, htmp_inverse=inverse,
                            phase=phase, warnings=tuple(warnings), vectors=vectors)


