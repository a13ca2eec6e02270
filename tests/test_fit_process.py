"""Fits in a second process while this one solves: the same layers, in order, and no helper left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from safetensors.numpy import save_file

from conftest import run_htmp
from htmp_cli.errors import HtmpError
from htmp_cli.fit_process import FitProcess
from htmp_cli.loaders import open_checkpoint
from htmp_cli.loaders.matrices import plan_matrices
from htmp_cli.options import AnalysisOptions
from htmp_cli.jobs import fits_in_a_process
from htmp_cli.layers import solve_matrix
from htmp_cli.pipeline import iter_layers


def _without_timings(layer):  # type: ignore[no-untyped-def]
    return replace(layer, timings=None)


@pytest.fixture(scope="module")
def mixed_checkpoint(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Heavy- and light-tailed matrices, a zero one, one with NaN and one too small to fit."""
    rng = np.random.default_rng(5)
    tensors = {f"blocks.{i}.weight": (rng.standard_normal((300, 120)) * (1 + rng.pareto(1.5 + i, 120))).astype(np.float32)
               for i in range(6)}
    tensors["zero.weight"] = np.zeros((64, 64), dtype=np.float32)
    broken = rng.standard_normal((64, 64)).astype(np.float32)
    broken[3, 5] = np.nan
    tensors["nan.weight"] = broken
    tensors["small.weight"] = rng.standard_normal((40, 8)).astype(np.float32)
    path = tmp_path_factory.mktemp("fitting") / "model.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("keep_eigenvalues", [False, True])
def test_the_fitting_process_gives_this_process_results_in_order(mixed_checkpoint, keep_eigenvalues) -> None:  # type: ignore[no-untyped-def]
    events: list[str] = []

    class Listener:
        def layer_started(self, spec) -> None:  # type: ignore[no-untyped-def]
            events.append(f"started {spec.name}")

        def layer_done(self, result) -> None:  # type: ignore[no-untyped-def]
            events.append(f"done {result.name}")

    options = AnalysisOptions()
    checkpoint = open_checkpoint(mixed_checkpoint)
    matrices, _ = plan_matrices(checkpoint.tensors, options.matrix_rules)
    here = list(iter_layers(checkpoint, matrices, options, keep_eigenvalues=keep_eigenvalues))
    beside = list(iter_layers(checkpoint, matrices, options, Listener(), keep_eigenvalues, fit_process=True))
    assert [layer.name for layer in beside] == [spec.name for spec in matrices]
    assert [_without_timings(b) for b in beside] == [_without_timings(a) for a in here]  # every field, exactly
    assert {layer.status for layer in here} == {"success", "failed"}
    for a, b in zip(here, beside):
        if keep_eigenvalues and a.eigenvalues is not None:
            assert np.array_equal(a.eigenvalues, b.eigenvalues)
        else:
            assert b.eigenvalues is None or not keep_eigenvalues
    for spec in matrices:  # each layer starts before it is done, and all are done
        assert events.index(f"started {spec.name}") < events.index(f"done {spec.name}")
    assert len(events) == 2 * len(matrices)


def test_a_fit_that_raises_raises_here_with_its_traceback(mixed_checkpoint) -> None:  # type: ignore[no-untyped-def]
    options = AnalysisOptions()
    checkpoint = open_checkpoint(mixed_checkpoint)
    spec = plan_matrices(checkpoint.tensors, options.matrix_rules)[0][0]
    solved = solve_matrix(spec, partial(checkpoint.read_matrix, spec), options)
    with FitProcess(options) as fitter:
        fitter.submit(replace(solved, spectrum="not a spectrum"))
        with pytest.raises(RuntimeError, match="(?s)in the fitting process:\n.*Traceback.*AttributeError"):
            fitter.next()
        fitter.submit(solved)  # it goes on with the next matrix
        assert fitter.next().status == "success"


def test_a_dead_fitting_process_is_an_error_naming_the_way_out(mixed_checkpoint) -> None:  # type: ignore[no-untyped-def]
    options = AnalysisOptions()
    checkpoint = open_checkpoint(mixed_checkpoint)
    spec = plan_matrices(checkpoint.tensors, options.matrix_rules)[0][0]
    solved = solve_matrix(spec, partial(checkpoint.read_matrix, spec), options)
    with pytest.raises(HtmpError, match="the fitting process died .*--jobs 1"):
        with FitProcess(options) as fitter:
            psutil.Process(fitter.pid).kill()
            psutil.Process(fitter.pid).wait(10)
            fitter.submit(solved)
            fitter.next()
    assert not psutil.pid_exists(fitter.pid) or psutil.Process(fitter.pid).status() == psutil.STATUS_ZOMBIE


def test_the_fitting_process_leaves_with_its_parent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A parent killed with SIGKILL closes the helper's input: the helper ends by itself."""
    script = ("import os, signal, sys\n"
              "from htmp_cli.fit_process import FitProcess\n"
              "from htmp_cli.options import AnalysisOptions\n"
              "fitter = FitProcess(AnalysisOptions())\n"
              "print(fitter.pid, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert parent.returncode == -9
    helper = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 15
    while psutil.pid_exists(helper) and psutil.Process(helper).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the fitting process outlived its parent"
        time.sleep(0.1)


def _plan(shapes: list[tuple[int, int]]) -> list[SimpleNamespace]:
    return [SimpleNamespace(shape=shape, slices=1, update_rank=None) for shape in shapes]


def test_a_fitting_process_is_used_where_it_pays(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import htmp_cli.jobs as jobs

    monkeypatch.setattr(jobs, "usable_cores", lambda: 2)
    options = AnalysisOptions(device="cpu")
    minilm_like = _plan([(384, 384)] * 24 + [(1536, 384)] * 12 + [(30522, 384), (512, 384)])
    assert fits_in_a_process(minilm_like, options, None)
    assert not fits_in_a_process(minilm_like, options, 1)  # --jobs 1: this process alone
    assert not fits_in_a_process(minilm_like, replace(options, htmp=False), None)  # the other fits are cheap
    assert not fits_in_a_process(_plan([(300, 120)] * 40), options, None)  # solved before the helper starts
    assert not fits_in_a_process(_plan([(30522, 4096)] * 2), options, None)  # two fits are not worth it
    monkeypatch.setattr(jobs, "usable_cores", lambda: 1)
    assert not fits_in_a_process(minilm_like, options, None)


def test_minilm_from_the_cli_fits_beside_with_the_results_of_one_process(minilm_path) -> None:  # type: ignore[no-untyped-def]
    path = str(minilm_path)
    beside = run_htmp("analyze", path, "-f", "json", "--no-progress")
    alone = run_htmp("analyze", path, "-f", "json", "--no-progress", "--jobs", "1")
    assert beside.returncode == alone.returncode == 0, beside.stderr + alone.stderr
    beside_report, alone_report = json.loads(beside.stdout), json.loads(alone.stdout)
    expected_workers = 2 if len(psutil.Process().cpu_affinity()) >= 2 else 1
    assert beside_report["summary"]["workers"] == expected_workers
    assert alone_report["summary"]["workers"] == 1
    for report in (beside_report, alone_report):
        for layer in report["layers"]:
            layer.pop("timings")
    assert beside_report["layers"] == alone_report["layers"]


def test_ctrl_c_stops_the_fitting_process_too(minilm_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([sys.executable, "-m", "htmp_cli", "analyze", str(minilm_path), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    helpers: list[psutil.Process] = []
    deadline = time.monotonic() + 30
    while not helpers and proc.poll() is None and time.monotonic() < deadline:
        try:
            helpers = [p for p in parent.children() if "htmp_cli.fit_process" in " ".join(p.cmdline())]
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.01)
    assert helpers, "no fitting process was started"
    proc.send_signal(2)  # SIGINT, as Ctrl-C sends it
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    _, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive, f"the fitting process outlived the command: {alive}"
