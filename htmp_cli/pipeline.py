"""The analysis pipeline: checkpoint -> matrices -> spectra -> fits -> layer results -> report.

`analyze` is the one entry point every command uses; reporters only ever see its result types.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from htmp_cli import __version__
from htmp_cli.device import LARGE_MATRIX_SIZE, device_for, require_cuda
from htmp_cli.errors import OptionError
from htmp_cli.fits.htmp import HTMPFit, fit_htmp
from htmp_cli.fits.metrics import ScaleMetrics, scale_metrics
from htmp_cli.fits.mp import MIN_EIGENVALUES, MPFit, fit_mp
from htmp_cli.fits.phases import PHASE_LABELS, PhaseResult, classify
from htmp_cli.fits.powerlaw import PowerLawFit, fit_power_law, fit_power_law_ww
from htmp_cli.loaders import Checkpoint, open_checkpoint
from htmp_cli.loaders.matrices import MatrixSpec, SkippedTensor, plan_matrices
from htmp_cli.options import AnalysisOptions
from htmp_cli.spectral import (Decoder, NonFiniteMatrixError, Spectrum, gram_matrix, one_blas_thread, pool_spectra,
                               spectrum_of)

# WeightWatcher's names for the two ends of the alpha scale (math.md section 2).
ALPHA_OVER_TRAINED = 2.0
ALPHA_UNDER_TRAINED = 6.0


@dataclass(frozen=True)
class LayerTimings:
    read: float
    eigen: float
    fit: float


@dataclass(frozen=True)
class LayerResult:
    """Everything htmp knows about one analysed matrix."""

    name: str
    tensor: str
    kind: str
    dtype: str
    shape: tuple[int, int]
    N: int
    M: int
    status: str  # "success", or "failed" when no spectrum could be computed
    reason: str | None = None
    slices: int = 1  # conv kernel positions whose eigenvalues are pooled
    group: str | None = None  # the expert group (stacked tensor or experts.*. name) of an expert
    note: str | None = None  # how the matrix was cut from its tensor, when that needs saying
    precision: str | None = None
    backend: str | None = None
    n_eigenvalues: int = 0
    n_zero: int = 0
    n_clamped: int = 0
    power_law: PowerLawFit | None = None
    metrics: ScaleMetrics | None = None
    mp: MPFit | None = None
    htmp: HTMPFit | None = None  # direct orientation: lambda / scale ~ HTMP
    htmp_inverse: HTMPFit | None = None  # inverse orientation: scale / lambda ~ HTMP
    phase: PhaseResult | None = None
    warnings: tuple[str, ...] = ()
    timings: LayerTimings = field(default_factory=lambda: LayerTimings(0.0, 0.0, 0.0))
    # The spectrum itself, kept only when asked (figures need it; reports and the JSON do not).
    eigenvalues: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def Q(self) -> float:
        return self.N / self.M

    @property
    def alpha(self) -> float | None:
        return self.power_law.alpha if self.power_law is not None else None

    @property
    def htmp_best(self) -> HTMPFit | None:
        """The HTMP orientation with the smaller KS distance (None if neither fit)."""
        fits = [f for f in (self.htmp, self.htmp_inverse) if f is not None and f.status == "success"]
        return min(fits, key=lambda f: f.ks_htmp) if fits else None


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


@dataclass(frozen=True)
class SourceInfo:
    path: str
    format: str
    files: tuple[str, ...]
    size_bytes: int
    fingerprint: str
    notes: tuple[str, ...] = ()  # what the loader found and did: folder choice, wrappers removed, ...


@dataclass(frozen=True)
class ExpertGroup:
    """The experts of one mixture-of-experts layer, summarised together."""

    name: str
    n_experts: int
    n_fitted: int
    alpha_mean: float | None
    alpha_min: float | None
    alpha_max: float | None
    phase_counts: dict[str, int]


@dataclass(frozen=True)
class ModelSummary:
    n_layers: int
    n_failed_layers: int
    n_failed_fits: int
    n_skipped: int
    means: dict[str, float | None]  # over successful layers (alpha-based: successful fits only)
    warning_counts: dict[str, int]
    phase_counts: dict[str, int]
    worrying: dict[str, list[str]]  # rank-collapse, random-like and very heavy-tailed layers by name
    timings: dict[str, float]
    kind_counts: dict[str, int] = field(default_factory=dict)
    expert_groups: tuple[ExpertGroup, ...] = ()
    workers: int = 1  # processes that analysed layers (2 with a fitting process); timings are summed over them


@dataclass(frozen=True)
class AnalysisReport:
    htmp_version: str
    source: SourceInfo
    options: AnalysisOptions
    layers: tuple[LayerResult, ...]
    skipped: tuple[SkippedTensor, ...]
    summary: ModelSummary


class ProgressListener(Protocol):
    def start(self, total: int) -> None: ...
    def layer_started(self, spec: MatrixSpec) -> None: ...
    def layer_done(self, result: LayerResult) -> None: ...


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
    try:
        if W.ndim == 3:  # conv kernel slices, one spectrum each, pooled
            spectrum = pool_spectra([spectrum_of(gram_matrix(W[k], options.precision, decode, torch_device),
                                                 options.backend) for k in range(W.shape[0])])
            del W
        else:
            gram = gram_matrix(W, options.precision, decode, torch_device)
            del W
            spectrum = spectrum_of(gram, options.backend)
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
                    note=spec.note)
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
                 warnings=analysis.warnings, eigenvalues=spectrum.eigenvalues if keep_eigenvalues else None,
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
    return SpectrumAnalysis(power_law=fit, metrics=metrics, mp=mp, htmp=direct, htmp_inverse=inverse,
                            phase=phase, warnings=tuple(warnings))


def iter_layers(checkpoint: Checkpoint, matrices: list[MatrixSpec], options: AnalysisOptions,
                listener: ProgressListener | None = None, keep_eigenvalues: bool = False,
                fit_process: bool = False) -> Iterator[LayerResult]:
    """Analyse matrices in order, with one tensor in memory at a time.

    With `fit_process`, a second process fits each solved matrix while this one solves the next
    (see htmp_cli.fit_process); results still come in the checkpoint's order.
    """
    if not fit_process:
        for spec in matrices:
            if listener is not None:
                listener.layer_started(spec)
            result = analyze_matrix(spec, partial(checkpoint.read_matrix, spec), options, keep_eigenvalues)
            if listener is not None:
                listener.layer_done(result)
            yield result
        return
    from htmp_cli.fit_process import FitProcess

    # The other core is the fitting process's: a two-thread Gram product would only take turns with
    # it (MiniLM-L6: 1.76 s with two threads for the embedding's product, 1.45 s with one).
    with FitProcess(options, keep_eigenvalues) as fitter, one_blas_thread():
        for spec in matrices:
            if listener is not None:
                listener.layer_started(spec)
            fitter.submit(solve_matrix(spec, partial(checkpoint.read_matrix, spec), options))
            for result in fitter.ready():
                if listener is not None:
                    listener.layer_done(result)
                yield result
        while fitter.pending:
            result = fitter.next()
            if listener is not None:
                listener.layer_done(result)
            yield result


def summarize(layers: tuple[LayerResult, ...], skipped: tuple[SkippedTensor, ...], timings: dict[str, float],
              workers: int = 1) -> ModelSummary:
    ok = [layer for layer in layers if layer.status == "success"]
    fitted = [layer for layer in ok if layer.power_law is not None and layer.power_law.ok]

    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(present)) if present else None

    means: dict[str, float | None] = {
        "alpha": mean([layer.power_law.alpha for layer in fitted]),
        "D": mean([layer.power_law.D for layer in fitted]),
        "alpha_weighted": mean([layer.metrics.alpha_weighted for layer in fitted]),
        "log_alpha_norm": mean([layer.metrics.log_alpha_norm for layer in fitted]),
    }
    for name in ("log_norm", "log_spectral_norm", "stable_rank", "entropy", "rank_loss", "log_spread"):
        means[name] = mean([getattr(layer.metrics, name) for layer in ok])
    means["kappa"] = mean([layer.htmp.kappa for layer in ok if layer.htmp is not None and layer.htmp.status == "success"])
    means["mp_softrank"] = mean([layer.mp.mp_softrank for layer in ok if layer.mp is not None])
    warning_counts = {
        label: sum(label in layer.warnings for layer in layers) for label in ("over-trained", "under-trained")
    }
    phase_counts = {phase: sum(layer.phase is not None and layer.phase.phase == phase for layer in ok)
                    for phase in PHASE_LABELS}
    worrying = {
        "rank-collapse": [layer.name for layer in ok if layer.phase.phase == "rank-collapse"],
        "random-like": [layer.name for layer in ok if layer.phase.phase == "random-like"],
        "very heavy-tailed": [layer.name for layer in ok if layer.phase.very_heavy],
    }
    kind_counts: dict[str, int] = {}
    for layer in layers:
        kind_counts[layer.kind] = kind_counts.get(layer.kind, 0) + 1
    return ModelSummary(
        kind_counts=kind_counts,
        expert_groups=expert_groups(layers),
        n_layers=len(layers),
        n_failed_layers=len(layers) - len(ok),
        n_failed_fits=len(ok) - len(fitted),
        n_skipped=len(skipped),
        means=means,
        warning_counts=warning_counts,
        phase_counts=phase_counts,
        worrying=worrying,
        timings=timings,
        workers=workers,
    )


def expert_groups(layers: tuple[LayerResult, ...]) -> tuple[ExpertGroup, ...]:
    members: dict[str, list[LayerResult]] = {}
    for layer in layers:
        if layer.group is not None:
            members.setdefault(layer.group, []).append(layer)
    groups = []
    for name, group in members.items():
        alphas = [g.power_law.alpha for g in group if g.status == "success" and g.power_law is not None and g.power_law.ok]
        phases: dict[str, int] = {}
        for g in group:
            if g.phase is not None:
                phases[g.phase.phase] = phases.get(g.phase.phase, 0) + 1
        groups.append(ExpertGroup(name=name, n_experts=len(group), n_fitted=len(alphas),
                                  alpha_mean=float(np.mean(alphas)) if alphas else None,
                                  alpha_min=min(alphas) if alphas else None, alpha_max=max(alphas) if alphas else None,
                                  phase_counts=phases))
    return tuple(groups)


# Below this much work (sum of N M^2 + M^3 over the matrices, about 3 s of float64 solves on one
# core here) starting worker processes costs more than they save.
PARALLEL_MIN_WORK = 2e11


def choose_jobs(matrices: list[MatrixSpec], options: AnalysisOptions, requested: int | None) -> int:
    """Worker processes for one checkpoint: `requested`, or for None as many as pay off."""
    if requested is not None:
        if requested < 1:
            raise OptionError(f"--jobs must be at least 1, got {requested}")
        return min(requested, max(1, len(matrices)))
    if options.device == "cuda" or any(device_for(options.device, options.backend, min(m.shape)) == "cuda"
                                        for m in matrices if min(m.shape) >= LARGE_MATRIX_SIZE):
        return 1  # the GPU is the parallel worker
    work = sum(m.slices * (max(m.shape) * min(m.shape) ** 2 + min(m.shape) ** 3) for m in matrices)
    large = sum(min(m.shape) >= LARGE_MATRIX_SIZE for m in matrices)
    if work < PARALLEL_MIN_WORK or large < 2:
        return 1
    return max(1, min(usable_cores(), large))


# A fitting process needs about 0.5 s to start (Python, numpy, scipy.special) on the other core; it
# pays when the solves take longer than that (this much work, MiniLM-L6 has 1.1e10) and there are
# enough matrices for their fits to matter.
FIT_PROCESS_MIN_WORK = 5e9
FIT_PROCESS_MIN_MATRICES = 8


def fits_in_a_process(matrices: list[MatrixSpec], options: AnalysisOptions, requested: int | None) -> bool:
    """Whether a second process should fit the layers while this one solves them (`requested` jobs
    None only: --jobs 1 means this process alone)."""
    if requested is not None or not options.htmp or options.device == "cuda" or usable_cores() < 2:
        return False
    work = sum(m.slices * (max(m.shape) * min(m.shape) ** 2 + min(m.shape) ** 3) for m in matrices)
    return len(matrices) >= FIT_PROCESS_MIN_MATRICES and work >= FIT_PROCESS_MIN_WORK


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def analyze(path: str | Path, options: AnalysisOptions | None = None,
            listener: ProgressListener | None = None, keep_eigenvalues: bool = False,
            jobs: int | None = None) -> AnalysisReport:
    """Analyse every matrix of a checkpoint; `keep_eigenvalues` keeps each layer's spectrum (for figures).

    `jobs` worker processes analyse layers in parallel (None: as many as the checkpoint's size
    pays for, see `choose_jobs`, or for a mid-sized one a fitting process beside this one, see
    `fits_in_a_process`; 1: in this process, one layer at a time).
    """
    options = options or AnalysisOptions()
    if options.device == "cuda":
        require_cuda()
    started = time.perf_counter()
    checkpoint = open_checkpoint(path)
    matrices, skipped = plan_matrices(checkpoint.tensors, options.matrix_rules)
    workers = choose_jobs(matrices, options, jobs)
    opened = time.perf_counter()
    if listener is not None:
        listener.start(len(matrices))
    if workers > 1:
        from htmp_cli.layer_pool import analyze_in_pool

        results = []
        for result in analyze_in_pool(str(path), matrices, options, workers, keep_eigenvalues,
                                      on_start=listener.layer_started if listener is not None else None):
            if listener is not None:
                listener.layer_done(result)
            results.append(result)
        layers = tuple(results)
    else:
        fit_process = fits_in_a_process(matrices, options, jobs)
        layers = tuple(iter_layers(checkpoint, matrices, options, listener, keep_eigenvalues, fit_process))
        workers = 2 if fit_process else 1
    finished = time.perf_counter()
    timings = {
        "open": opened - started,
        "read": sum(layer.timings.read for layer in layers),
        "eigen": sum(layer.timings.eigen for layer in layers),
        "fit": sum(layer.timings.fit for layer in layers),
        "total": finished - started,
    }
    source = SourceInfo(
        path=str(checkpoint.path),
        format=checkpoint.format,
        files=tuple(str(f) for f in checkpoint.files),
        size_bytes=checkpoint.size_bytes,
        fingerprint=checkpoint.fingerprint,
        notes=checkpoint.notes,
    )
    return AnalysisReport(
        htmp_version=__version__,
        source=source,
        options=options,
        layers=layers,
        skipped=tuple(skipped),
        summary=summarize(layers, tuple(skipped), timings, workers),
    )
