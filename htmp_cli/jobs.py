"""How many processes analyse one checkpoint: the parallelism policy, from the shapes of its matrices."""

from __future__ import annotations

import os

from htmp_cli.device import LARGE_MATRIX_SIZE, device_for
from htmp_cli.errors import OptionError
from htmp_cli.loaders.matrices import MatrixSpec
from htmp_cli.options import AnalysisOptions


# Below this much work (sum of N M^2 + M^3 over the matrices, about 3 s of float64 solves on one
# core here) starting worker processes costs more than they save.
PARALLEL_MIN_WORK = 2e11


def solve_work(matrix: MatrixSpec) -> int:
    """Multiply-adds of one matrix's solve: N M^2 + M^3, or for a low-rank update of rank r the
    QR factorisations of its factors, N r^2 + r^3."""
    side = matrix.update_rank or min(matrix.shape)
    return matrix.slices * (max(matrix.shape) * side ** 2 + side ** 3)


def choose_jobs(matrices: list[MatrixSpec], options: AnalysisOptions, requested: int | None) -> int:
    """Worker processes for one checkpoint: `requested`, or for None as many as pay off."""
    if requested is not None:
        if requested < 1:
            raise OptionError(f"--jobs must be at least 1, got {requested}")
        return min(requested, max(1, len(matrices)))
    if options.device == "cuda" or any(device_for(options.device, options.backend, min(m.shape)) == "cuda"
                                        for m in matrices if min(m.shape) >= LARGE_MATRIX_SIZE):
        return 1  # the GPU is the parallel worker
    work = sum(solve_work(m) for m in matrices)
    large = sum(min(m.shape) >= LARGE_MATRIX_SIZE and m.update_rank is None for m in matrices)
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
    work = sum(solve_work(m) for m in matrices)
    return len(matrices) >= FIT_PROCESS_MIN_MATRICES and work >= FIT_PROCESS_MIN_WORK


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


