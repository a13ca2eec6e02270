"""What every worker process htmp spawns shares: one BLAS thread, and no life after its parent."""

from __future__ import annotations

import os
import threading
import time

# Set before numpy's or torch's thread pools exist, so that each is one thread from the start.
ONE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def leave_with_parent(parent_pid: int) -> None:
    """Start a daemon thread that ends this process once `parent_pid` is no longer its parent.

    A parent killed with SIGKILL cannot stop its workers; they notice they were orphaned and leave.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
