"""The task every executor runs: analyse one checkpoint in a worker process and return its Outcome.

An outcome is a value, not an exception, so one bad checkpoint is a row in the store and never the end
of the scan. It is made of frozen dataclasses that pickle, since it crosses process (and, with Dask,
machine) borders; the scan process alone turns it into the store's JSON.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.processes import ONE_THREAD_ENV, leave_with_parent
from htmp_cli.results import Report

# Set in local worker processes by `init_local_worker`: where layer progress goes.
_events: Any = None


def init_local_worker(events: Any, parent_pid: int) -> None:
    """Process-pool initializer: progress queue, one BLAS thread, deaf to Ctrl-C, and exit when the scan process dies."""
    global _events
    # Ctrl-C reaches the whole process group; the scan process alone answers it, by killing its
    # workers, so a worker neither prints a traceback nor goes on. The worker was started with SIGINT
    # blocked (executors._sigint_held): ignoring it first discards one that came while it imported.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _events = events
    os.environ.update(ONE_THREAD_ENV)  # before torch is imported, so its own pool is one thread too
    leave_with_parent(parent_pid)


class _QueueListener:
    def __init__(self, index: int) -> None:
        self._index = index

    def start(self, total: int) -> None:
        _events.put((self._index, "start", total))

    def layer_started(self, spec: object) -> None:
        pass

    def layer_done(self, result: object) -> None:
        _events.put((self._index, "layer", 1))


@dataclass(frozen=True)
class Outcome:
    """One checkpoint analysed: its report when that succeeded, the error when not."""

    status: str  # "success" or "failed"
    error: str | None
    seconds: float
    report: Report | None  # without eigenvalues: it travels back to the scan process


def failed(error: str, seconds: float = 0.0) -> Outcome:
    return Outcome(status="failed", error=error, seconds=seconds, report=None)


def analyze_unit(index: int, path: str, options: AnalysisOptions) -> Outcome:
    """Analyse one checkpoint with one BLAS thread; every error becomes a failed outcome."""
    from threadpoolctl import threadpool_limits

    from htmp_cli.pipeline import analyze

    os.environ.update(ONE_THREAD_ENV)
    started = time.perf_counter()
    listener = _QueueListener(index) if _events is not None else None
    try:
        with threadpool_limits(limits=1):
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(1)
            report = analyze(path, options, listener, jobs=1)  # the scan's workers are the parallelism
        return Outcome(status="success", error=None, seconds=time.perf_counter() - started, report=report)
    except HtmpError as err:
        return failed(str(err), time.perf_counter() - started)
    except MemoryError:
        return failed("out of memory", time.perf_counter() - started)
    except Exception as err:  # a bug or an unforeseen file: recorded with its type, the scan goes on
        return failed(f"internal error: {type(err).__name__}: {err}", time.perf_counter() - started)
