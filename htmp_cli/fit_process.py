"""The fits of a checkpoint's layers in a second process, while this one solves the next matrices.

The eigen-solves (numpy's LAPACK) and the fits (Python and scipy.special) both hold the GIL, so a
second thread gains nothing; a second process does: on MiniLM-L6 the solves take about 0.9 s and the
fits, with scipy.special's import, 0.7 s, and side by side the whole analysis takes the solves' time
(benchmarks/README.md). The helper is a plain `python -m htmp_cli.fit_process` rather than a
multiprocessing child, so that it never re-imports the caller's main module (a script without an
`if __name__ == "__main__"` guard, a notebook). It reads pickled solved matrices from its stdin and
writes pickled layer results to its stdout, in order; a thread here drains them as they come, so
neither side can block the other on a full pipe.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Iterator

from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.processes import ONE_THREAD_ENV

_DIED = "the fitting process died (killed by the system, out of memory, or a crash in native code); " \
        "run with --jobs 1 to fit in this process"


class FitProcess:
    """A helper process that fits solved matrices (`pipeline.SolvedMatrix`) in the order sent.

    Use as a context manager: leaving it closes the helper, and kills it when leaving on an error.
    """

    def __init__(self, options: AnalysisOptions, keep_eigenvalues: bool = False) -> None:
        self.options, self.keep_eigenvalues = options, keep_eigenvalues  # what every result is fitted with
        package_root = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, **ONE_THREAD_ENV,
               "PYTHONPATH": package_root if not path else package_root + os.pathsep + path}
        self._process = subprocess.Popen([sys.executable, "-m", "htmp_cli.fit_process"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=env)
        self._replies: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._pending = 0
        threading.Thread(target=self._drain, daemon=True).start()
        self._send((options, keep_eigenvalues))

    def __enter__(self) -> FitProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.close(kill=kind is not None)

    def submit(self, solved: Any) -> None:
        """Queue one solved matrix; its LayerResult comes back, in order, from `ready` or `next`."""
        self._send(("fit", solved))
        self._pending += 1

    def submit_matrix(self, spec: Any, stored: Any, decode: Any) -> None:
        """Queue one matrix to be solved there too (its stored values, a numpy array, and their
        decoder, as `Checkpoint.read_matrix` gives them); its LayerResult comes back as `submit`'s."""
        self._send(("solve", spec, stored, decode))
        self._pending += 1

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def pending(self) -> int:
        """Matrices submitted whose results have not been taken yet."""
        return self._pending

    def ready(self) -> Iterator[Any]:
        """The results already back, without waiting."""
        while self._pending:
            try:
                reply = self._replies.get_nowait()
            except queue.Empty:
                return
            yield self._unpack(reply)

    def next(self) -> Any:
        """The next result, waiting for it."""
        if not self._pending:
            raise RuntimeError("no matrix is being fitted")
        return self._unpack(self._replies.get())

    def close(self, kill: bool = False) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            try:
                self._process.stdin.close()  # end of input: the helper leaves
            except BrokenPipeError:
                pass
        if kill:
            self._process.kill()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _send(self, item: object) -> None:
        assert self._process.stdin is not None
        try:
            pickle.dump(item, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._process.stdin.flush()
        except BrokenPipeError:
            raise HtmpError(_DIED) from None

    def _drain(self) -> None:
        assert self._process.stdout is not None
        while True:
            try:
                reply = pickle.load(self._process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                self._replies.put(None)
                return
            self._replies.put(reply)

    def _unpack(self, reply: tuple[str, Any] | None) -> Any:
        if reply is None:
            self._pending = 0
            raise HtmpError(_DIED)
        self._pending -= 1
        kind, value = reply
        if kind == "error":
            raise value
        return value


def _serve() -> None:
    """The helper's loop: fit each solved matrix read from stdin, write its result to stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; closing stdin ends this
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the results
    from htmp_cli.layers import fit_matrix, solve_matrix

    try:
        options, keep_eigenvalues = pickle.load(requests)
        while True:
            request = pickle.load(requests)
            try:
                if request[0] == "solve":
                    _, spec, stored, decode = request
                    # The solve holds the only reference, so the weights go once the Gram matrix exists.
                    held = [stored]
                    del stored, request
                    solved = solve_matrix(spec, lambda: (held.pop(), decode), options)
                else:
                    solved = request[1]
                reply: tuple[str, object] = ("result", fit_matrix(solved, options, keep_eigenvalues))
            except Exception:  # a bug in a fit: the parent raises it, with this process's traceback
                reply = ("error", RuntimeError(f"in the fitting process:\n{traceback.format_exc()}"))
            pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()
    except (EOFError, BrokenPipeError):
        return  # the parent is done, or gone


if __name__ == "__main__":
    _serve()
    # Not the interpreter's teardown (0.1 s with scipy loaded, which the parent would wait for):
    # every result is written and flushed, and nothing else here holds state worth cleaning up.
    sys.stderr.flush()
    os._exit(0)
