"""htmp_cli as a library: analyze() on paths and weights in memory, the Report and its round trip,
check and diff, and an import that costs nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import htmp_cli
from conftest import run_htmp
from htmp_cli.errors import CheckpointError, OptionError
from htmp_cli.results import Report


def module_of(weights: dict[str, np.ndarray]) -> torch.nn.Module:
    """A module tree holding `weights` under their dotted names (floats as parameters, the rest frozen)."""
    root = torch.nn.Module()
    for name, array in weights.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        tensor = torch.from_numpy(array.copy())
        node.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=tensor.is_floating_point()))
    return root


def _same_layers(a: Report, b: Report) -> None:
    """The same layers (a safetensors file may store them in another order), every number equal."""
    by_name = {layer.name: layer for layer in b.layers}
    assert sorted(by_name) == sorted(layer.name for layer in a.layers)
    for x in a.layers:
        y = by_name[x.name]
        assert x.eigenvalues is not None and np.array_equal(x.eigenvalues, y.eigenvalues), x.name
        assert replace(x, timings=None) == replace(y, timings=None), x.name  # every metric, exactly


def _weights(kind: str, minilm_path, make_formats) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    if kind == "minilm":
        from safetensors.numpy import load_file

        return load_file(str(minilm_path))
    return make_formats.cnn_weights() if kind == "cnn" else make_formats.transformer_weights()


@pytest.mark.parametrize("kind", ["cnn", "transformer", "minilm"])
def test_module_state_dict_and_file_give_the_same_analysis(kind, minilm_path, make_formats, tmp_path) -> None:  # type: ignore[no-untyped-def]
    weights = _weights(kind, minilm_path, make_formats)
    path = tmp_path / "model.safetensors"
    save_file(weights, str(path))
    module = module_of(weights)
    from_file = htmp_cli.analyze(path)
    _same_layers(htmp_cli.analyze(module), from_file)
    _same_layers(htmp_cli.analyze(module.state_dict()), from_file)
    _same_layers(htmp_cli.analyze(weights), from_file)  # numpy arrays
    assert from_file.layers and all(layer.status == "success" for layer in from_file.layers)


def test_tied_weights_are_analysed_once_under_both_names() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(300, 64), torch.nn.Linear(64, 300, bias=False))
    model[1].weight = model[0].weight  # the output head tied to the embedding
    for source in (model, model.state_dict()):
        report = htmp_cli.analyze(source)
        assert [(layer.name, layer.aliases) for layer in report.layers] == [("0.weight", ("1.weight",))]
        assert report.layer("1.weight") is report.layers[0]
        assert "tied" in " ".join(report.source.notes)
    shared = np.random.default_rng(0).standard_normal((200, 50))
    report = htmp_cli.analyze({"a": shared, "b": shared, "c": shared.copy()})
    assert [(layer.name, layer.aliases) for layer in report.layers] == [("a", ("b",)), ("c", ())]
    assert json.loads(report.to_json())["layers"][0]["aliases"] == ["b"]


def test_wrapped_modules_keep_their_own_names() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(80, 120), torch.nn.Tanh(), torch.nn.Linear(120, 40))
    plain = htmp_cli.analyze(model)
    for wrapped, prefix in ((torch.nn.DataParallel(model), "module."), (torch.compile(model), "_orig_mod.")):
        report = htmp_cli.analyze(wrapped)
        _same_layers(report, plain)
        assert f"removed the {prefix!r} prefix from every name" in report.source.notes


def test_buffers_and_integer_parameters_are_skipped_with_their_reason() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64))
    model.register_parameter("codes", torch.nn.Parameter(torch.arange(400).reshape(20, 20), requires_grad=False))
    report = htmp_cli.analyze(model)
    reasons = {s.name: s.reason for s in report.skipped}
    assert [layer.name for layer in report.layers] == ["0.weight"]
    assert "buffer" in reasons["1.running_mean"] and "buffer" in reasons["1.num_batches_tracked"]
    assert "integer" in reasons["codes"]
    assert "1-D" in reasons["0.bias"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_modules_match_their_saved_file(dtype, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file as save_torch

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(96, 160), torch.nn.ReLU(), torch.nn.Linear(160, 96)).to(dtype)
    path = tmp_path / "half.safetensors"
    save_torch({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    in_memory, from_file = htmp_cli.analyze(model), htmp_cli.analyze(path)
    _same_layers(in_memory, from_file)
    assert in_memory.layers[0].dtype == ("BF16" if dtype == torch.bfloat16 else "F16")


def test_unreadable_sources_are_clear_errors() -> None:
    with pytest.raises(CheckpointError, match=r"^weight: the tensor is on the meta device"):
        htmp_cli.analyze(torch.nn.Linear(64, 64, device="meta"))
    with pytest.raises(CheckpointError, match="must be 2-D"):
        htmp_cli.analyze(np.zeros((4, 5, 6)))
    with pytest.raises(CheckpointError, match="two tensors are both named 'a.b'"):
        htmp_cli.analyze({"a.b": np.eye(20), "a": {"b": np.eye(30)}})
    with pytest.raises(CheckpointError, match="w: a sparse_coo tensor"):
        htmp_cli.analyze({"w": torch.eye(20).to_sparse()})
    with pytest.raises(OptionError, match="jobs must be a whole number"):
        htmp_cli.analyze(np.eye(20), jobs=0)
    with pytest.raises(htmp_cli.HtmpError, match="cannot analyse a int"):
        htmp_cli.analyze(3)
    with pytest.raises(CheckpointError, match="no such file"):
        htmp_cli.analyze("no/such/model.safetensors")


def test_a_matrix_of_nans_is_a_failed_layer() -> None:
    report = htmp_cli.analyze(np.full((50, 40), np.nan))
    (layer,) = report.layers
    assert layer.name == "matrix" and layer.status == "failed" and "NaN" in layer.reason


def test_options_are_the_flags_in_snake_case() -> None:
    weights = {"a": np.random.default_rng(2).standard_normal((120, 30)), "b": np.random.default_rng(3).standard_normal((9, 60))}
    assert [layer.name for layer in htmp_cli.analyze(weights).layers] == ["a"]  # min_dim 10 by default
    assert [layer.name for layer in htmp_cli.analyze(weights, min_dim=8).layers] == ["a", "b"]
    report = htmp_cli.analyze(weights, exclude="^a$", min_dim=8, htmp=False, thresholds={"alpha_heavy": 3.5})
    assert [layer.name for layer in report.layers] == ["b"] and report.layers[0].htmp is None
    assert report.options.thresholds.alpha_heavy == 3.5
    with pytest.raises(OptionError, match="unknown key 'min_dimm' .did you mean 'min_dim'"):
        htmp_cli.analyze(weights, min_dimm=8)
    with pytest.raises(OptionError, match="min_dim must be an integer"):
        htmp_cli.analyze(weights, min_dim="8")
    with pytest.raises(OptionError, match="--precision must be one of float64, float32"):
        htmp_cli.analyze(weights, precision="float16")
    with pytest.raises(OptionError, match="unknown phase threshold 'alpha'"):
        htmp_cli.analyze(weights, thresholds={"alpha": 1})


def test_every_fixture_round_trips_through_json(formats_dir, minilm_path) -> None:  # type: ignore[no-untyped-def]
    paths = sorted(p for p in formats_dir.iterdir() if p.is_file() and not p.name.endswith(".json")) + [minilm_path]
    assert len(paths) >= 5
    for path in paths:
        report = htmp_cli.analyze(path)
        again = Report.from_json(report.to_json())
        assert again == report, path
        assert all(layer.eigenvalues is None for layer in again.layers)
        saved = report.to_json(formats_dir.parent / "saved.json")
        assert Report.from_json(formats_dir.parent / "saved.json") == report and saved.startswith("{")


def test_the_cli_json_reads_back_as_the_report_it_describes(minilm_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "minilm.json"
    done = run_htmp("analyze", str(minilm_path), "-f", "json", "-o", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    from_cli = Report.from_json(out)
    from_api = htmp_cli.analyze(minilm_path)
    assert [replace(a, timings=None) for a in from_cli.layers] == [replace(b, timings=None) for b in from_api.layers]


def test_the_dataframe_has_numbers_in_numeric_columns(make_formats) -> None:  # type: ignore[no-untyped-def]
    frame = htmp_cli.analyze(make_formats.transformer_weights()).to_dataframe()
    assert len(frame) > 5 and frame["name"].is_unique
    for column in ("alpha", "D", "kappa", "kappa_direct", "kappa_inverse", "log_norm", "stable_rank", "Q", "ks_htmp"):
        assert str(frame[column].dtype) == "float64", column
    for column in ("N", "M", "tail_size", "n_spikes", "rank_loss"):
        assert str(frame[column].dtype) == "Int64", column
    assert set(frame["kappa_orientation"].dropna()) <= {"direct", "inverse"}
    assert frame["phase"].notna().all() and frame["phase_reason"].str.len().gt(0).all()
    assert str(frame["very_heavy"].dtype) == "boolean"


def test_figures_leave_the_callers_matplotlib_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = ("import matplotlib\nmatplotlib.use('svg')\nmatplotlib.rcParams['font.size'] = 17.0\n"
              "import numpy as np, htmp_cli\n"
              "r = htmp_cli.analyze(np.random.default_rng(0).standard_normal((300, 100)))\n"
              "f, g = r.plot('matrix'), r.plot_overview()\n"
              "import matplotlib.pyplot as plt\n"
              "print(matplotlib.get_backend(), matplotlib.rcParams['font.size'], len(plt.get_fignums()),"
              " type(f).__name__, len(f.axes) > 0)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "17.0", "0", "Figure", "True"]


def test_a_report_from_json_says_why_it_cannot_draw(tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = Report.from_json(htmp_cli.analyze(np.random.default_rng(0).standard_normal((300, 100))).to_json())
    with pytest.raises(htmp_cli.HtmpError, match="holds no eigenvalues"):
        report.plot("matrix")
    with pytest.raises(KeyError, match="did you mean 'matrix'"):
        report.layer("matrx")


def test_check_and_diff_are_the_commands_objects(make_formats, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.safetensors"
    save_file(make_formats.transformer_weights(), str(path))
    verdict = htmp_cli.check(path)
    done = run_htmp("check", str(path), cwd=tmp_path)
    assert verdict.passed == (done.returncode == 0), done.stdout + done.stderr
    strict = htmp_cli.check(htmp_cli.analyze(path), config={"check": {"rules": [
        {"name": "alpha-cap", "metric": "alpha", "max": 1.0}]}})
    assert not strict.passed and "alpha-cap" in {v.rule.name for v in strict.errors}
    assert "alpha-cap" not in {v.rule.name for v in verdict.violations}
    report = htmp_cli.analyze(path)
    change = htmp_cli.diff(report, path)
    assert change.only_before == () and change.only_after == ()
    assert all(c.delta == 0 for c in change.summary.values() if c.delta is not None)


def test_import_htmp_cli_is_cheap() -> None:
    script = ("import sys, time\nt = time.perf_counter()\nimport htmp_cli\nt = time.perf_counter() - t\n"
              "heavy = [m for m in ('numpy', 'torch', 'matplotlib', 'pandas', 'scipy', 'rich', 'typer') if m in sys.modules]\n"
              "print(heavy, htmp_cli.__version__, callable(htmp_cli.analyze), f'{t:.4f}')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    heavy, version, callable_, seconds = done.stdout.split()
    assert heavy == "[]" and callable_ == "True" and float(seconds) < 0.05


def test_a_report_of_the_first_schema_still_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = htmp_cli.analyze(np.random.default_rng(4).standard_normal((200, 80)))
    old = report.to_dict()
    old["schema"] = "htmp.report/1"
    for layer in old["layers"]:
        del layer["aliases"]  # /1 had none
    old["summary"]["means"]["kappa"] = 123.0  # /1's mean kappa was the direct orientation's: not kept
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert Report.from_json(tmp_path / "old.json") == report
    done = run_htmp("report", str(tmp_path / "old.json"), "-o", str(tmp_path / "old.html"))
    assert done.returncode == 0, done.stderr
    with pytest.raises(htmp_cli.HtmpError, match="expected schema 'htmp.report/1' or 'htmp.report/2' or 'htmp.report/3', found 'x/9'"):
        Report.from_dict({**old, "schema": "x/9"})


def test_state_dicts_are_read_as_files_are() -> None:
    """A checkpoint dict as torch.load returns it: the wrapper unwrapped, what is not a tensor ignored."""
    weights = {"layer.weight": torch.randn(120, 40), "layer.bias": torch.randn(120)}
    report = htmp_cli.analyze({"state_dict": weights, "epoch": 3, "lr": None})
    assert [layer.name for layer in report.layers] == ["layer.weight"]
    assert any("'state_dict' entry" in note for note in report.source.notes)
    empty = htmp_cli.analyze({"a": np.empty((0, 20)), "b": np.empty((0, 20))})
    assert not empty.layers and {s.name for s in empty.skipped} == {"a", "b"}  # never "tied"


def test_numpy_numbers_are_options_too() -> None:
    weights = {"w": np.random.default_rng(5).standard_normal((90, 9))}
    assert [layer.name for layer in htmp_cli.analyze(weights, min_dim=np.int64(8), htmp=np.bool_(False)).layers] == ["w"]
    with pytest.raises(OptionError, match="min_dim must be an integer, got True"):
        htmp_cli.analyze(weights, min_dim=True)


def test_options_beside_a_report_are_refused_and_the_baseline_gets_the_same_options() -> None:
    weights = {"a": np.random.default_rng(6).standard_normal((200, 60)), "b": np.random.default_rng(7).standard_normal((90, 9))}
    report = htmp_cli.analyze(weights, min_dim=8)
    with pytest.raises(OptionError, match="min_dim: analysis options apply to sources"):
        htmp_cli.check(report, min_dim=8)
    with pytest.raises(OptionError, match="apply to sources"):
        htmp_cli.diff(report, weights, min_dim=8)
    verdict = htmp_cli.check(weights, baseline=weights, min_dim=8)
    assert not [v for v in verdict.violations if "baseline" in v.message]
    assert Report.from_json(report.to_json().encode()) == report


@pytest.mark.parametrize("shape", [(300, 100), (40, 24, 3, 3)])
def test_a_tensor_off_the_host_is_solved_by_torch_where_it_lives(shape) -> None:  # type: ignore[no-untyped-def]
    """The path of a tensor on a GPU (the memory loader hands it over as it is), run on torch's CPU
    device: the solve takes the torch tensor itself, unless --device cpu asks for the host."""
    from pathlib import Path

    from htmp_cli.layers import solve_matrix
    from htmp_cli.loaders.entry import TensorEntry
    from htmp_cli.loaders.matrices import plan_matrices
    from htmp_cli.loaders.pytorch import stored_from_tensor
    from htmp_cli.options import AnalysisOptions

    torch.manual_seed(3)
    tensor = torch.randn(*shape, dtype=torch.bfloat16)
    (spec,), _ = plan_matrices([TensorEntry(name="w", dtype="BF16", shape=shape, file=Path("<memory>"))])
    view = spec.view.apply
    on_device = solve_matrix(spec, lambda: (view(tensor), None), AnalysisOptions())
    stored, decode = stored_from_tensor(tensor)
    on_host = solve_matrix(spec, lambda: (view(stored), decode), AnalysisOptions())
    assert on_device.spectrum.backend == "torch-cpu" and on_host.spectrum.backend == "numpy"
    np.testing.assert_allclose(on_device.spectrum.eigenvalues, on_host.spectrum.eigenvalues, rtol=1e-10,
                               atol=1e-12 * on_host.spectrum.lambda_max)
    asked = solve_matrix(spec, lambda: (view(tensor), None), AnalysisOptions(device="cpu"))
    assert asked.spectrum.backend == "numpy" and np.array_equal(asked.spectrum.eigenvalues, on_host.spectrum.eigenvalues)
    broken = tensor.clone()
    broken.view(-1)[7] = float("nan")
    failed = solve_matrix(spec, lambda: (view(broken), None), AnalysisOptions())
    assert failed.spectrum is None and "NaN" in failed.failure


def test_the_summary_means_carry_their_standard_errors_and_older_reports_get_them() -> None:
    from htmp_cli.report.formats import summary_lines

    rng = np.random.default_rng(0)
    weights = {f"l{k}.weight": rng.standard_t(3, (200, 100)).astype(np.float32) for k in range(5)}
    report = htmp_cli.analyze(weights)
    alphas = [layer.alpha for layer in report.layers]
    assert report.summary.standard_errors["alpha"] == pytest.approx(np.std(alphas, ddof=1) / np.sqrt(5))
    assert any(line.startswith("mean alpha") and "(se " in line for line in summary_lines(report))
    older = report.to_dict()
    older["schema"] = "htmp.report/2"
    del older["summary"]["standard_errors"]
    assert Report.from_dict(older).summary.standard_errors == report.summary.standard_errors
    single = htmp_cli.analyze({"w": weights["l0.weight"]})
    assert single.summary.standard_errors["alpha"] is None  # one layer: no spread to speak of
