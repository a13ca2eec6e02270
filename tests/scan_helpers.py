"""Module-level helpers that scan tests hand to worker processes (they are pickled by name)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from htmp_cli.scan.worker import analyze_unit


def crash_on_marked(index: int, path: str, options):  # type: ignore[no-untyped-def]
    """analyze_unit, except that a checkpoint named *crash* kills its worker process outright."""
    if "crash" in Path(path).name:
        os.kill(os.getpid(), signal.SIGKILL)
    return analyze_unit(index, path, options)


def counting_analyze(index: int, path: str, options):  # type: ignore[no-untyped-def]
    """analyze_unit, after appending the checkpoint's path to the file $HTMP_TEST_ANALYSED: a count of
    analyses made by the workers themselves, independent of what the scan reports or stores."""
    with open(os.environ["HTMP_TEST_ANALYSED"], "a", encoding="utf-8") as log:  # one short append: atomic
        log.write(path + "\n")
    return analyze_unit(index, path, options)


def hang_on_marked(index: int, path: str, options):  # type: ignore[no-untyped-def]
    """analyze_unit, except that a checkpoint named *hang* keeps its worker busy for a minute."""
    if "hang" in Path(path).name:
        time.sleep(60)
    return analyze_unit(index, path, options)


def main_with_task(task) -> None:  # type: ignore[no-untyped-def]
    """`htmp` whose local scan workers run `task`, e.g.
    python -c "import scan_helpers as h; h.main_with_task(h.counting_analyze)" scan ..."""
    from htmp_cli.cli import main
    from htmp_cli.scan.executors import LocalExecutor

    LocalExecutor.__init__.__defaults__ = (task,)
    main()
