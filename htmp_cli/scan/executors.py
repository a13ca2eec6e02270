"""Where a scan's checkpoints are analysed: a local process pool, or a Dask cluster.

Both take (index, path) tasks and yield (index, outcome) as they finish; the scan process alone
writes the store. The local executor takes tasks from the iterable only as a worker is about to be
free, so the scan can claim each checkpoint just before it is analysed. Progress events (a checkpoint's
layer count, each layer done) reach `on_event` in the scan process's thread.

Ctrl-C: a terminal sends SIGINT to the whole foreground process group. Local workers ignore it from
the moment they exist (see `_sigint_held`); the scan process alone turns it into KeyboardInterrupt
and kills its workers at once, so the scan ends within a moment and no worker prints a traceback.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Protocol

from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.scan.worker import Outcome, analyze_unit, failed, init_local_worker

Task = tuple[int, str]
EventHandler = Callable[[int, str, int], None]

DIED = ("the process analysing it died (killed by the system, out of memory, or a crash in native code); "
        "it was retried alone and died again")


class Executor(Protocol):
    description: str

    def run(self, tasks: Iterable[Task], options: AnalysisOptions, on_event: EventHandler) -> Iterator[tuple[int, Outcome]]: ...


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Block SIGINT in this thread while it may start worker processes.

    A spawned process inherits the signal mask, so a Ctrl-C cannot reach a worker while it imports,
    before its initializer ignores SIGINT (and drops the pending one); that window is where a worker
    printed a KeyboardInterrupt traceback. The scan process still gets the signal once the mask is
    restored (Python's resource tracker is started the same way).
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no process groups to signal either
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _submit(pool: ProcessPoolExecutor, task: Callable[..., Outcome], *args: Any) -> Future:
    with _sigint_held():  # a submit may start a worker process
        return pool.submit(task, *args)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """End a pool now: its workers are killed, not waited for, and reaped before this returns.

    `shutdown(wait=False)` alone lets the running tasks finish, and the interpreter's exit then waits
    for them (seconds to hours). Python 3.14 has `kill_workers`; before, the processes are private.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout=2)


class LocalExecutor:
    """`jobs` spawned processes with one BLAS thread each.

    When a worker dies (SIGKILL, OOM killer, a segfault in native code) the pool breaks and every
    checkpoint in flight is under suspicion: each is retried alone in a fresh one-process pool, so
    only the one that kills its process again is recorded as failed.
    """

    def __init__(self, jobs: int, task: Callable[[int, str, AnalysisOptions], Outcome] = analyze_unit) -> None:
        if jobs < 1:
            raise HtmpError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = jobs
        self._task = task  # a module-level function (it is pickled by name into the workers)
        self.description = f"{jobs} local process{'es' if jobs > 1 else ''}"

    def run(self, tasks: Iterable[Task], options: AnalysisOptions, on_event: EventHandler) -> Iterator[tuple[int, Outcome]]:
        context = multiprocessing.get_context("spawn")
        events = context.Queue()
        source = iter(tasks)
        pending: deque[Task] = deque()  # taken from `source`, not yet submitted
        suspects: deque[Task] = deque()

        def take(count: int) -> None:
            while len(pending) < count and (task := next(source, None)) is not None:
                pending.append(task)

        def new_pool(workers: int) -> ProcessPoolExecutor:
            return ProcessPoolExecutor(workers, mp_context=context, initializer=init_local_worker,
                                       initargs=(events, os.getpid()))

        def drain() -> None:
            while True:
                try:
                    index, kind, value = events.get_nowait()
                except queue.Empty:
                    return
                on_event(index, kind, value)

        def alone(task: Task) -> Outcome:
            pool = new_pool(1)
            try:
                future = _submit(pool, self._task, task[0], task[1], options)
                while not wait([future], timeout=0.1)[0]:
                    drain()
                drain()
                try:
                    return future.result()
                except BrokenProcessPool:
                    return failed(DIED)
            except BaseException:
                _kill_workers(pool)
                raise
            finally:
                pool.shutdown(wait=False, cancel_futures=True)

        try:
            while True:
                if suspects:
                    task = suspects.popleft()
                    yield task[0], alone(task)
                    continue
                take(self.jobs)
                if not pending:
                    break
                pool = new_pool(min(self.jobs, len(pending)))
                running: dict[Any, Task] = {}
                broken = False
                try:
                    while not broken:
                        # Two per worker keep each busy while a result travels back; no more, since
                        # a task taken is a checkpoint claimed from any other scan of the store.
                        take(2 * self.jobs - len(running))
                        if not pending and not running:
                            break
                        while pending and len(running) < 2 * self.jobs:
                            task = pending.popleft()
                            running[_submit(pool, self._task, task[0], task[1], options)] = task
                        done, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
                        drain()
                        for future in done:
                            task = running.pop(future)
                            try:
                                outcome = future.result()
                            except BrokenProcessPool:
                                broken = True
                                suspects.append(task)
                                continue
                            yield task[0], outcome
                    suspects.extend(running.values())
                    pool.shutdown(wait=not broken, cancel_futures=True)
                except BaseException:  # Ctrl-C, or the scan stopped reading: nobody wants the rest
                    _kill_workers(pool)
                    raise
            drain()
        finally:
            events.close()
            events.join_thread()


class DaskExecutor:
    """The same tasks on a Dask distributed cluster: an address, or "local" for a LocalCluster.

    Paths must be readable by the workers under the same names (a shared file system).
    """

    def __init__(self, address: str, jobs: int) -> None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise HtmpError("--scheduler needs Dask: pip install 'htmp-cli[dask]'") from None
        self.address = address
        self.jobs = jobs
        self.description = "a Dask LocalCluster" if address == "local" else f"the Dask scheduler at {address}"

    def run(self, tasks: Iterable[Task], options: AnalysisOptions, on_event: EventHandler) -> Iterator[tuple[int, Outcome]]:
        from distributed import Client, LocalCluster, as_completed

        cluster = None
        try:
            if self.address == "local":
                cluster = LocalCluster(n_workers=self.jobs, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
                client = Client(cluster)
            else:
                client = Client(self.address, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise HtmpError(f"--scheduler {self.address}: cannot connect ({err})") from None
        try:
            self.description += f" ({len(client.scheduler_info().get('workers', {}))} workers)"
            futures = {client.submit(analyze_unit, index, path, options, pure=False, retries=0): index
                       for index, path in tasks}
            for future in as_completed(futures):
                index = futures[future]
                try:
                    outcome = future.result()
                except Exception as err:  # KilledWorker and friends: the worker died on this checkpoint
                    outcome = failed(f"the Dask task failed: {type(err).__name__}: {err}")
                yield index, outcome
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
