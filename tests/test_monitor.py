"""htmp_cli.Monitor and its JSON Lines log: spectra while a plain PyTorch loop trains."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

import htmp_cli
from htmp_cli.errors import HtmpError, OptionError
from htmp_cli.results import layer_to_dict
from htmp_cli.runlog import LOG_SCHEMA, is_log_file, read_log

torch = pytest.importorskip("torch")


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(), torch.nn.Linear(48, 40), torch.nn.ReLU(),
                               torch.nn.Linear(40, 12))


def _train(model, monitor, steps: int, copies: dict | None = None) -> None:
    """SGD on fixed random data; `copies` receives the weights of each step the monitor analyses."""
    generator = torch.Generator().manual_seed(1)
    X, y = torch.randn(256, 32, generator=generator), torch.randint(0, 12, (256,), generator=generator)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.2)
    for step in range(1, steps + 1):
        loss = torch.nn.functional.cross_entropy(model(X), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if copies is not None and step % monitor.every == 0:
            copies[step] = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        monitor.step(step)


def _without_timings(layer) -> dict:
    data = layer_to_dict(layer)
    data.pop("timings")
    return data


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_the_log_holds_each_analysed_step_as_analyze_gives_it(tmp_path, background):
    model, log = _model(), tmp_path / "run.jsonl"
    copies: dict = {}
    with htmp_cli.Monitor(model, every=5, log=log, background=background) as monitor:
        _train(model, monitor, 20, copies)
    run = read_log(log)
    assert [s.step for s in run.steps] == [5, 10, 15, 20]
    assert run.options == htmp_cli.analyze(np.eye(12)).options
    for logged in run.steps:
        expected = htmp_cli.analyze(copies[logged.step])
        assert [layer.name for layer in logged.layers] == ["0.weight", "2.weight", "4.weight"]
        for layer in expected.layers:
            assert _without_timings(logged.layer(layer.name)) == _without_timings(layer)
    lines = log.read_text().splitlines()
    assert json.loads(lines[0])["schema"] == LOG_SCHEMA and len(lines) == 1 + 4 * 3
    assert is_log_file(log)


def test_the_weights_change_between_steps_and_the_records_follow(tmp_path):
    model, log = _model(), tmp_path / "run.jsonl"
    with htmp_cli.Monitor(model, every=10, log=log) as monitor:
        _train(model, monitor, 30)
    norms = [s.layer("2.weight").metrics.norm for s in read_log(log).steps]
    assert len(set(norms)) == 3


def test_history_is_one_numeric_row_per_layer_per_step(tmp_path):
    model = _model()
    for log in (tmp_path / "run.jsonl", None):
        with htmp_cli.Monitor(model, every=4, log=log) as monitor:
            _train(model, monitor, 8)
        frame = monitor.history()
        assert list(frame["step"]) == [4, 4, 4, 8, 8, 8]
        assert list(frame.columns[:3]) == ["step", "time", "name"]
        assert str(frame["step"].dtype) == "Int64"
        for column in ("time", "alpha", "kappa", "D", "stable_rank"):
            assert frame[column].dtype == np.float64, column
        assert frame["phase"].notna().all()


def test_foreground_steps_return_their_report_and_collect_hands_each_over_once():
    model = _model()
    with htmp_cli.Monitor(model, every=3) as monitor:
        assert monitor.step(1) is None and monitor.step(2) is None
        result = monitor.step(3)
        assert result is not None and result.step == 3 and len(result.report.layers) == 3
        assert monitor.latest is result
        assert monitor.analyze(4).step == 4  # an evaluation or a save, off the cadence
        assert [r.step for r in monitor.collect()] == [3, 4]
        assert monitor.collect() == []


def test_background_analyses_finish_in_order_and_training_never_fits(tmp_path):
    model = _model()
    with htmp_cli.Monitor(model, every=2, background=True) as monitor:
        _train(model, monitor, 10)
        monitor.wait()
        assert [r.step for r in monitor.collect()] == [2, 4, 6, 8, 10]
        assert monitor.waited_seconds >= 0.0
        assert monitor._fitter is not None  # the fitting process, kept across the analyses


def test_a_resumed_run_appends_and_a_step_done_twice_keeps_its_last_records(tmp_path):
    log = tmp_path / "run.jsonl"
    model = _model()
    with htmp_cli.Monitor(model, every=5, log=log) as monitor:
        _train(model, monitor, 10)
    with htmp_cli.Monitor(model, every=5, log=log) as monitor:  # resumed from step 10: analysed again
        monitor.analyze(10)
        _train(model, monitor, 5)  # a loop that counts from 1 again: step 5 is analysed a second time
    text = log.read_text().splitlines()
    assert sum(1 for line in text if LOG_SCHEMA in line) == 2  # a header for each session
    run = read_log(log)
    assert [s.step for s in run.steps] == [5, 10] and run.earlier_runs == 0
    second = json.loads(text[-1])  # the last record of step 5 (the resumed loop's)
    assert run.steps[0].time == second["time"]


def test_a_log_cut_short_mid_line_is_read_up_to_its_last_whole_record(tmp_path):
    log = tmp_path / "run.jsonl"
    model = _model()
    with htmp_cli.Monitor(model, every=5, log=log) as monitor:
        _train(model, monitor, 10)
    text = log.read_text()
    log.write_text(text + text.splitlines()[-1][:40])  # killed while writing a record
    assert [s.step for s in read_log(log).steps] == [5, 10]
    log.write_text(text + "not json\n" + text.splitlines()[-1] + "\n")
    with pytest.raises(HtmpError, match=r"run.jsonl:8: not a training log record"):
        read_log(log)


def test_files_that_are_not_logs_are_refused_by_name(tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text('{"step": 1}\n')
    with pytest.raises(HtmpError, match="other.jsonl: not a training log"):
        read_log(other)
    with pytest.raises(HtmpError, match="other.jsonl: not a training log"):
        htmp_cli.Monitor(_model(), log=other)
    assert not is_log_file(other)


def test_tied_weights_are_analysed_once_with_their_aliases():
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(50, 16)
    model.head = torch.nn.Linear(16, 50, bias=False)
    model.head.weight = model.embed.weight
    for background in (False, True):
        with htmp_cli.Monitor(model, every=1, background=background) as monitor:
            monitor.step(1)
            monitor.wait()
            (result,) = monitor.collect()
        (layer,) = result.report.layers
        assert layer.name == "embed.weight" and layer.aliases == ("head.weight",)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(OptionError, match="every must be a whole number"):
        htmp_cli.Monitor(_model(), every=0)
    with pytest.raises(OptionError, match="Monitor watches a model in memory"):
        htmp_cli.Monitor("model.safetensors")
    with pytest.raises(OptionError, match="min_dimm.*did you mean 'min_dim'"):
        htmp_cli.Monitor(_model(), min_dimm=3)
    with htmp_cli.Monitor(_model(), every=2) as monitor:
        with pytest.raises(OptionError, match="step must be a whole number"):
            monitor.step(-1)
    with pytest.raises(HtmpError, match="the monitor is closed"):
        monitor.analyze(3)


def test_a_background_failure_is_raised_at_the_next_call_of_the_training_loop():
    model = _model()
    monitor = htmp_cli.Monitor(model, every=1, background=True)
    monitor.step(1)
    monitor.wait()
    os.kill(monitor._fitter.pid, signal.SIGKILL)
    monitor._fitter._process.wait()
    monitor.step(2)
    with pytest.raises(HtmpError, match="fitting process died"):
        monitor.wait()
    monitor.close(abandon=True)


def test_a_background_analysis_solves_tensors_off_the_host_where_they_live_and_fits_them_in_the_helper():
    """The background path for weights on a GPU, run on torch's CPU device: the memory loader hands
    such a tensor over as it is; the monitor's thread solves it with torch, the helper fits it."""
    from dataclasses import replace

    from htmp_cli.fit_process import FitProcess
    from htmp_cli.loaders.memory import open_in_memory
    from htmp_cli.options import AnalysisOptions
    from htmp_cli.pipeline import analyze

    model = _model()
    tensors = dict(model.named_parameters())
    checkpoint = open_in_memory(model)
    as_if_on_a_gpu = replace(checkpoint, reader=lambda entry: (tensors[entry.key].detach(), None))
    options = AnalysisOptions()
    with FitProcess(options) as fitter:
        there = analyze(as_if_on_a_gpu, options, fitter=fitter, solve_in_fitter=True)
        pid = fitter.pid
    here = analyze(as_if_on_a_gpu, options, jobs=1)
    assert pid > 0 and [layer.backend for layer in there.layers] == ["torch-cpu"] * 3
    for a, b in zip(there.layers, here.layers):
        assert _without_timings(a) == _without_timings(b)


def test_a_run_resumed_after_a_crash_mid_line_appends_after_the_last_whole_record(tmp_path):
    log, model = tmp_path / "run.jsonl", _model()
    with htmp_cli.Monitor(model, every=5, log=log) as monitor:
        _train(model, monitor, 10)
    text = log.read_text()
    log.write_text(text[: len(text) - 25])  # killed while writing step 10's last record
    assert "cut short" in read_log(log).notes[0] and "step 10 has 2 of 3 layers" in read_log(log).notes[1]
    with htmp_cli.Monitor(model, every=5, log=log) as monitor:
        monitor.analyze(10)  # resumed from the checkpoint of step 10
    run = read_log(log)
    assert [s.step for s in run.steps] == [5, 10] and len(run.steps[1].layers) == 3 and run.notes == ()


def test_a_new_run_appended_to_an_old_log_is_read_alone_and_other_options_are_refused(tmp_path):
    log, model = tmp_path / "run.jsonl", _model()
    with htmp_cli.Monitor(model, every=5, log=log) as monitor:
        _train(model, monitor, 15)
    with htmp_cli.Monitor(model, every=5, log=log) as monitor:  # a new run: from step 5 again
        _train(model, monitor, 10)
    run = read_log(log)
    assert [s.step for s in run.steps] == [5, 10] and run.earlier_runs == 1
    with pytest.raises(OptionError, match="analysed with min_dim = 10, not 20: give this run a log of its own"):
        htmp_cli.Monitor(model, log=log, min_dim=20)


def test_stop_rules_say_what_they_mean_and_refuse_what_they_cannot_judge():
    from htmp_cli.monitor import stop_rules

    model = _model()
    with htmp_cli.Monitor(model, every=1, stop_on=[{"name": "tiny-alpha", "summary": "mean_alpha", "min": 100}]) as monitor:
        monitor.step(3)
    assert monitor.should_stop and monitor.stop_reason.step == 3
    assert str(monitor.stop_reason).startswith("rule 'tiny-alpha' (summary mean_alpha >= 100) broken at step 3: mean_alpha = ")
    with pytest.raises(OptionError, match="one rule table; pass a list of rules"):
        stop_rules({"name": "x", "summary": "mean_alpha", "min": 2})
    with pytest.raises(OptionError, match="'falls' is a trend rule"):
        stop_rules({"check": {"trend": [{"name": "falls", "summary": "mean_alpha", "direction": "falling"}]}})
    with pytest.raises(HtmpError, match="unknown key 'chekc'"):
        stop_rules({"chekc": {}})


def test_a_background_monitor_dropped_without_close_ends_its_thread_and_helper():
    import gc
    import threading
    import time

    model = _model()
    monitor = htmp_cli.Monitor(model, every=1, background=True)
    monitor.step(1)
    monitor.wait()
    helper = monitor._fitter._process
    del monitor
    gc.collect()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (helper.poll() is None or any(t.name == "htmp-monitor" for t in threading.enumerate())):
        time.sleep(0.05)
    assert helper.poll() is not None
    assert not any(t.name == "htmp-monitor" for t in threading.enumerate())
