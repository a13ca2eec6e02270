"""The analysis pipeline: checkpoint -> matrices -> spectra -> fits -> layer results -> report.

`analyze` is the one entry point every command uses; reporters only ever see its result types
(htmp_cli.results).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

from htmp_cli import __version__
from htmp_cli.device import require_cuda
from htmp_cli.jobs import choose_jobs, fits_in_a_process
from htmp_cli.layers import analyze_matrix, solve_matrix
from htmp_cli.loaders import Checkpoint, open_checkpoint, plan_checkpoint
from htmp_cli.loaders.matrices import MatrixSpec
from htmp_cli.options import AnalysisOptions
from htmp_cli.results import LayerResult, Report, SourceInfo
from htmp_cli.spectral import is_torch_tensor, one_blas_thread
from htmp_cli.summary import summarize

if TYPE_CHECKING:
    from htmp_cli.fit_process import FitProcess


class ProgressListener(Protocol):
    def start(self, total: int) -> None: ...
    def layer_started(self, spec: MatrixSpec) -> None: ...
    def layer_done(self, result: LayerResult) -> None: ...


def iter_layers(checkpoint: Checkpoint, matrices: list[MatrixSpec], options: AnalysisOptions,
                listener: ProgressListener | None = None, keep_eigenvalues: bool = False,
                fit_process: bool = False, fitter: FitProcess | None = None,
                solve_in_fitter: bool = False) -> Iterator[LayerResult]:
    """Analyse matrices in order, with one tensor in memory at a time.

    With `fit_process`, a second process fits each solved matrix while this one solves the next
    (see htmp_cli.fit_process); results still come in the checkpoint's order. `fitter` is such a
    process that the caller keeps across analyses (a training monitor's: it starts once), made
    with the same options; with `solve_in_fitter` it solves the matrices held in this process's
    memory too, so that this thread only hands them over (tensors on an accelerator are still
    solved here, where they live).
    """
    if fitter is not None:
        if fitter.options != options or fitter.keep_eigenvalues != keep_eigenvalues:
            raise ValueError("the fitting process was started with other options (or eigenvalues kept otherwise) "
                             "than this analysis asks for")
        # As for a fitting process of its own: the other core is the helper's (see one_blas_thread).
        with one_blas_thread():
            yield from _through(fitter, checkpoint, matrices, options, listener, solve_in_fitter)
        return
    if solve_in_fitter:
        raise ValueError("solve_in_fitter needs a fitter")
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
    with FitProcess(options, keep_eigenvalues) as started, one_blas_thread():
        yield from _through(started, checkpoint, matrices, options, listener, solve_in_fitter=False)


def _through(fitter: FitProcess, checkpoint: Checkpoint, matrices: list[MatrixSpec], options: AnalysisOptions,
             listener: ProgressListener | None, solve_in_fitter: bool) -> Iterator[LayerResult]:
    for spec in matrices:
        if listener is not None:
            listener.layer_started(spec)
        if solve_in_fitter:
            stored, decode = checkpoint.read_matrix(spec)
            if is_torch_tensor(stored):
                fitter.submit(solve_matrix(spec, lambda: (stored, decode), options))
            else:
                fitter.submit_matrix(spec, stored, decode)
            del stored
        else:
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


def analyze(path: str | Path | Checkpoint, options: AnalysisOptions | None = None,
            listener: ProgressListener | None = None, keep_eigenvalues: bool = False,
            jobs: int | None = None, fitter: FitProcess | None = None, solve_in_fitter: bool = False) -> Report:
    """Analyse every matrix of a checkpoint (a path, or one opened already: in memory, say);
    `keep_eigenvalues` keeps each layer's spectrum (for figures).

    `jobs` worker processes analyse layers in parallel (None: as many as the checkpoint's size
    pays for, see `choose_jobs`, or for a mid-sized one a fitting process beside this one, see
    `fits_in_a_process`; 1: in this process, one layer at a time). `fitter` and
    `solve_in_fitter`: see `iter_layers` (a kept fitting process; `jobs` is then not used).
    """
    options = options or AnalysisOptions()
    if options.device == "cuda":
        require_cuda()
    started = time.perf_counter()
    checkpoint = path if isinstance(path, Checkpoint) else open_checkpoint(path)
    matrices, skipped = plan_checkpoint(checkpoint, options.matrix_rules)
    # Worker processes open the checkpoint again from its files; weights in memory have none.
    workers = choose_jobs(matrices, options, jobs) if checkpoint.files and fitter is None else 1
    opened = time.perf_counter()
    if listener is not None:
        listener.start(len(matrices))
    if workers > 1:
        from htmp_cli.layer_pool import analyze_in_pool

        results = []
        reopened = checkpoint.path if isinstance(path, Checkpoint) else path  # what each worker opens
        for result in analyze_in_pool(str(reopened), matrices, options, workers, keep_eigenvalues,
                                      on_start=listener.layer_started if listener is not None else None):
            if listener is not None:
                listener.layer_done(result)
            results.append(result)
        layers = tuple(results)
    else:
        fit_process = fitter is None and fits_in_a_process(matrices, options, jobs)
        layers = tuple(iter_layers(checkpoint, matrices, options, listener, keep_eigenvalues, fit_process,
                                   fitter, solve_in_fitter))
        workers = 2 if fit_process or fitter is not None else 1
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
        architecture=checkpoint.architecture,
    )
    return Report(
        htmp_version=__version__,
        source=source,
        options=options,
        layers=layers,
        skipped=tuple(skipped),
        summary=summarize(layers, tuple(skipped), timings, workers),
    )

