"""Layers of one checkpoint analysed in parallel worker processes, one BLAS thread each.

Measured on 2 cores (benchmarks/README.md): two processes solving one 4096 x 4096 eigenproblem each
with one thread finish both in the time one solve takes with two threads on its own, while threads
in one process gain nothing (torch's solver does not overlap across Python threads). So a large
checkpoint is split over processes. Each worker opens the checkpoint itself and reads only the
matrices it is given, so memory holds at most one matrix per worker; results come back in the
checkpoint's order, `window` tasks ahead, so a slow layer never lets the queue run far ahead.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Iterator

from htmp_cli.errors import HtmpError
from htmp_cli.loaders.matrices import MatrixSpec
from htmp_cli.options import AnalysisOptions
from htmp_cli.processes import ONE_THREAD_ENV, leave_with_parent

# Worker-process state, set once by `_init_worker`.
_checkpoint = None
_options: AnalysisOptions | None = None
_keep_eigenvalues = False


def _init_worker(path: str, options: AnalysisOptions, keep_eigenvalues: bool, parent_pid: int) -> None:
    global _checkpoint, _options, _keep_eigenvalues
    os.environ.update(ONE_THREAD_ENV)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    leave_with_parent(parent_pid)
    from threadpoolctl import threadpool_limits

    from htmp_cli.loaders import open_checkpoint

    threadpool_limits(limits=1)
    _checkpoint = open_checkpoint(path)
    _options, _keep_eigenvalues = options, keep_eigenvalues


def _analyze_one(spec: MatrixSpec):  # type: ignore[no-untyped-def]
    from htmp_cli.layers import analyze_matrix

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    return analyze_matrix(spec, partial(_checkpoint.read_matrix, spec), _options, _keep_eigenvalues)


def analyze_in_pool(path: str, matrices: list[MatrixSpec], options: AnalysisOptions, jobs: int,
                    keep_eigenvalues: bool = False, on_start=None) -> Iterator:  # type: ignore[no-untyped-def]
    """Yield each matrix's LayerResult, in order, computed by `jobs` spawned worker processes.

    `on_start(spec)` is called when a matrix becomes the next one awaited.
    """
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                               initargs=(str(path), options, keep_eigenvalues, os.getpid()))
    window = 2 * jobs  # queued tasks hold no weights; only the one a worker runs does
    in_flight: deque[tuple[MatrixSpec, Future]] = deque()
    queue = iter(matrices)
    try:
        for spec in queue:
            in_flight.append((spec, pool.submit(_analyze_one, spec)))
            if len(in_flight) >= window:
                break
        while in_flight:
            spec, future = in_flight.popleft()
            if on_start is not None:
                on_start(spec)
            try:
                result = future.result()
            except BrokenProcessPool:
                raise HtmpError(f"{spec.name}: a worker process died (killed by the system, out of memory, "
                                "or a crash in native code); run with --jobs 1 to analyse layer by layer") from None
            following = next(queue, None)
            if following is not None:
                in_flight.append((following, pool.submit(_analyze_one, following)))
            yield result
    except BaseException:
        # Interrupted, or the consumer failed: stop the workers now rather than let them finish
        # their layers (ProcessPoolExecutor has no public way to do so before Python 3.14).
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
