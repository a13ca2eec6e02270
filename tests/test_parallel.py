"""Layers analysed by worker processes: the same results as one at a time, in order, and a clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from safetensors.numpy import save_file

from conftest import run_htmp
from htmp_cli.errors import OptionError
from htmp_cli.options import AnalysisOptions
from htmp_cli.jobs import PARALLEL_MIN_WORK, choose_jobs
from htmp_cli.pipeline import analyze


@pytest.fixture(scope="module")
def large_checkpoint(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Four matrices with a side of 1,024 or more (the size from which torch solves them)."""
    rng = np.random.default_rng(11)
    tensors = {}
    for i, (rows, cols) in enumerate([(1100, 1024), (1024, 1300), (1200, 1030), (1050, 1024)]):
        tensors[f"blocks.{i}.weight"] = (rng.standard_normal((rows, cols)) * (1 + rng.pareto(2.0 + i, cols))).astype(np.float32)
    path = tmp_path_factory.mktemp("parallel") / "model.safetensors"
    save_file(tensors, str(path))
    return path


def test_workers_give_the_sequential_results_in_order(large_checkpoint) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    class Listener:
        def start(self, total: int) -> None:
            seen.append(f"start {total}")

        def layer_started(self, spec) -> None:  # type: ignore[no-untyped-def]
            seen.append(f"started {spec.name}")

        def layer_done(self, result) -> None:  # type: ignore[no-untyped-def]
            seen.append(f"done {result.name}")

    options = AnalysisOptions()
    sequential = analyze(large_checkpoint, options, jobs=1)
    parallel = analyze(large_checkpoint, options, Listener(), jobs=2)
    assert parallel.summary.workers == 2 and sequential.summary.workers == 1
    names = [layer.name for layer in sequential.layers]
    assert [layer.name for layer in parallel.layers] == names
    assert seen == ["start 4"] + [event for name in names for event in (f"started {name}", f"done {name}")]
    for a, b in zip(parallel.layers, sequential.layers):
        # One BLAS thread against two: the same spectrum up to float64 round-off.
        assert a.power_law.alpha == pytest.approx(b.power_law.alpha, rel=1e-9)
        assert a.power_law.tail_size == b.power_law.tail_size
        assert a.metrics.log_norm == pytest.approx(b.metrics.log_norm, rel=1e-12)
        assert a.htmp.kappa == pytest.approx(b.htmp.kappa, rel=1e-6)
        assert a.phase.phase == b.phase.phase
        assert a.backend == b.backend == "torch"


def _plan(shapes: list[tuple[int, int]]) -> list[SimpleNamespace]:
    return [SimpleNamespace(shape=shape, slices=1, update_rank=None) for shape in shapes]


def test_jobs_are_chosen_by_the_work(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import htmp_cli.jobs as jobs

    monkeypatch.setattr(jobs, "usable_cores", lambda: 2)
    options = AnalysisOptions(device="cpu")
    minilm_like = _plan([(384, 384)] * 24 + [(1536, 384)] * 12 + [(30522, 384)])
    llama_block = _plan([(4096, 4096)] * 4 + [(11008, 4096)] * 3)
    assert choose_jobs(minilm_like, options, None) == 1
    assert choose_jobs(llama_block, options, None) == 2
    assert choose_jobs(_plan([(4096, 4096)]), options, None) == 1  # one large matrix: nothing to share
    assert choose_jobs(llama_block, options, 1) == 1
    assert choose_jobs(llama_block, options, 16) == 7  # never more workers than matrices
    assert sum(s.shape[0] * s.shape[1] ** 2 + s.shape[1] ** 3 for s in minilm_like) < PARALLEL_MIN_WORK
    with pytest.raises(OptionError):
        choose_jobs(llama_block, options, 0)


def test_cli_jobs_flag(large_checkpoint) -> None:  # type: ignore[no-untyped-def]
    done = run_htmp("analyze", str(large_checkpoint), "--jobs", "2", "-f", "json", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["workers"] == 2
    table = run_htmp("analyze", str(large_checkpoint), "--jobs", "2", "--no-progress")
    assert "summed over 2 processes" in table.stdout
    bad = run_htmp("analyze", str(large_checkpoint), "--jobs", "0")
    assert bad.returncode == 2 and bad.stderr.startswith("htmp: error:")


def test_ctrl_c_stops_the_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGINT while workers compute: exit 130 within seconds, and no worker left behind."""
    rng = np.random.default_rng(12)
    path = tmp_path / "slow.safetensors"
    save_file({f"m{i}": rng.standard_normal((2048, 2048)).astype(np.float32) for i in range(12)}, str(path))
    proc = subprocess.Popen([sys.executable, "-m", "htmp_cli", "analyze", str(path), "--jobs", "2", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline:
        workers = [p for p in parent.children(recursive=True) if "spawn" in " ".join(p.cmdline())]
        if len(workers) >= 2 and all(p.cpu_percent(interval=0.2) > 20 for p in workers):
            break
    assert len(workers) >= 2, "the workers never started"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers left running: {alive}"
