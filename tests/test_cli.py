"""End to end through the command line: CliRunner in-process, and a real subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from htmp_cli import __version__
from htmp_cli.cli import app
from tests.conftest import run_htmp

runner = CliRunner()


def _strict_json(text: str) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def test_analyze_prints_table_summary_and_skipped(fixtures: Path) -> None:
    result = runner.invoke(app, ["analyze", str(fixtures / "demo_model.safetensors")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("layers.0.attn.qkv.weight", "alpha_weighted", "log_spectral_norm", "stable_rank",
                 "Summary", "Skipped tensors", "position_ids", "1-D tensor"):
        assert text in out


def test_json_follows_the_contract(fixtures: Path) -> None:
    result = runner.invoke(app, ["analyze", str(fixtures / "demo_model.safetensors"), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = _strict_json(result.output)
    assert data["schema"] == "htmp.report/3"
    assert data["htmp_version"] == __version__
    assert set(data["source"]) >= {"path", "format", "size_bytes", "fingerprint"}
    assert data["options"]["fit"] == "csn"
    assert len(data["layers"]) == 11
    layer = data["layers"][0]
    for key in ("name", "tensor", "kind", "shape", "N", "M", "Q", "n_eigenvalues", "status", "power_law", "metrics", "warnings"):
        assert key in layer
    for key in ("alpha", "xmin", "xmax", "D", "sigma", "tail_size", "status"):
        assert key in layer["power_law"]
    assert layer["kind"] == "embedding"
    assert {s["name"] for s in data["skipped"]} == {
        "layers.0.mlp.up.bias", "layers.0.norm.weight", "layers.1.mlp.up.bias", "layers.1.norm.weight",
        "final_norm.weight", "position_ids"}
    summary = data["summary"]
    assert summary["n_layers"] == 11 and summary["n_skipped"] == 6
    alphas = [l["power_law"]["alpha"] for l in data["layers"] if l["power_law"]["status"] == "success"]
    assert summary["means"]["alpha"] == pytest.approx(sum(alphas) / len(alphas))
    # Every layer has a phase with its rule and numbers; the summary counts them and names the worrying.
    phases = [l["phase"]["phase"] for l in data["layers"]]
    assert sum(summary["phase_counts"].values()) == len(phases) == 11
    assert all(summary["phase_counts"][p] == phases.count(p) for p in set(phases))
    assert summary["worrying"]["random-like"] == [l["name"] for l in data["layers"] if l["phase"]["phase"] == "random-like"]
    assert set(summary["worrying"]) == {"rank-collapse", "random-like", "very heavy-tailed"}
    for l in data["layers"]:
        assert l["phase"]["rule"] and l["phase"]["evidence"] and l["phase"]["summary"]
        assert set(l["htmp"]) == {"direct", "inverse", "best"}
        assert l["htmp"]["direct"]["orientation"] == "direct" and l["htmp"]["inverse"]["orientation"] == "inverse"
        assert {"lambda_plus", "n_spikes", "mp_softrank", "ks_bulk", "ks_all"} <= set(l["mp"])


def test_same_input_same_output(fixtures: Path) -> None:
    runs = [_strict_json(runner.invoke(app, ["analyze", str(fixtures / "demo_model.safetensors"), "-f", "json"]).output)
            for _ in range(2)]
    for run in runs:
        run["summary"].pop("timings")
        for layer in run["layers"]:
            layer.pop("timings")
    assert runs[0] == runs[1]


def test_csv_and_markdown_views_and_output_file(fixtures: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    result = runner.invoke(app, ["analyze", str(fixtures / "demo_model.safetensors"), "-f", "csv", "-o", str(target)])
    assert result.exit_code == 0 and result.output == ""
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 11 and {"name", "alpha", "D", "tail_size", "stable_rank", "warning"} <= set(rows[0])
    md = runner.invoke(app, ["analyze", str(fixtures / "demo_model.safetensors"), "-f", "md"]).output
    assert md.startswith("# htmp analysis") and "| name | kind | dtype | shape | alpha |" in md and "## Skipped tensors" in md


def test_bad_layers_fail_alone_and_the_run_goes_on(fixtures: Path) -> None:
    result = runner.invoke(app, ["analyze", str(fixtures / "bad_layers.safetensors"), "-f", "json"])
    assert result.exit_code == 0
    layers = {l["name"]: l for l in _strict_json(result.output)["layers"]}
    assert layers["healthy.weight"]["status"] == "success"
    assert layers["has_nan.weight"]["status"] == "failed" and "NaN or Inf" in layers["has_nan.weight"]["reason"]
    assert layers["has_inf.weight"]["status"] == "failed"
    assert layers["zeros.weight"]["status"] == "failed" and "all zeros" in layers["zeros.weight"]["reason"]
    for name in ("has_nan.weight", "zeros.weight"):
        assert layers[name]["power_law"] is None and layers[name]["metrics"] is None
    summary = _strict_json(result.output)["summary"]
    assert summary["n_failed_layers"] == 3


def test_every_float_dtype_is_analysed_and_integers_skipped(fixtures: Path) -> None:
    data = _strict_json(runner.invoke(app, ["analyze", str(fixtures / "dtypes.safetensors"), "-f", "json"]).output)
    assert sorted(l["dtype"] for l in data["layers"]) == sorted(["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"])
    assert all(l["status"] == "success" for l in data["layers"])
    reasons = {s["name"]: s["reason"] for s in data["skipped"]}
    assert "integer and bool" in reasons["i32.ids"] and "integer and bool" in reasons["bool.mask"]


def test_sharded_folder(fixtures: Path) -> None:
    data = _strict_json(runner.invoke(app, ["analyze", str(fixtures / "sharded"), "-f", "json"]).output)
    assert data["source"]["format"] == "safetensors-sharded"
    assert [l["name"] for l in data["layers"]] == ["a.weight", "b.weight"]


def test_min_dim_option(fixtures: Path) -> None:
    data = _strict_json(runner.invoke(app, ["analyze", str(fixtures / "demo_model.safetensors"), "-f", "json",
                                            "--min-dim", "100"]).output)
    assert [l["name"] for l in data["layers"]] == []
    assert any("below --min-dim 100" in s["reason"] for s in data["skipped"])


def test_ls_lists_what_would_be_analysed(fixtures: Path) -> None:
    result = runner.invoke(app, ["ls", str(fixtures / "demo_model.safetensors"), "-f", "json"])
    assert result.exit_code == 0
    actions = {t["name"]: t["action"] for t in json.loads(result.output)["tensors"]}
    assert actions["embed_tokens.weight"] == "analyse (embedding)"
    assert actions["position_ids"].startswith("skip: I64")
    table = runner.invoke(app, ["ls", str(fixtures / "demo_model.safetensors")], env={"COLUMNS": "200"})
    assert "11 matrices to analyse, 6 tensors skipped" in table.output


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parent.parent / "fixtures" / "corrupt").iterdir()))
def test_corrupt_input_exits_2_with_one_line(fixtures: Path, name: str) -> None:
    proc = run_htmp("analyze", str(fixtures / "corrupt" / name))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("htmp: error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(fixtures: Path) -> None:
    proc = run_htmp("analyze", str(fixtures / "corrupt" / "overlap.safetensors"), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["analyze", "/no/such/model.safetensors"], "no such file or directory"),
    (["analyze", "x", "--format", "xml"], "--format"),
    (["analyze", "x", "--bogus"], "No such option: --bogus"),
    (["analyze", "fixtures/demo_model.safetensors", "--min-dim", "0"], "--min-dim must be at least 1"),
    (["analyze", "fixtures/demo_model.safetensors", "--min-tail", "1"], "--min-tail must be at least 2"),
])
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    proc = run_htmp(*args, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_python_dash_m_and_version() -> None:
    proc = run_htmp("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"htmp {__version__}"


def test_piped_output_has_no_progress_and_does_not_import_torch(fixtures: Path) -> None:
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: sys.stderr.write('torch imported: %s' % ('torch' in sys.modules)))\n"
        f"sys.argv = ['htmp', 'analyze', {str(fixtures / 'demo_model.safetensors')!r}, '-f', 'json']\n"
        "runpy.run_module('htmp_cli', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stderr == "torch imported: False"
    json.loads(proc.stdout)


def test_progress_bar_on_a_terminal(fixtures: Path) -> None:
    """With stderr on a pseudo-terminal the progress bar is drawn there; stdout stays clean JSON."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "htmp_cli", "analyze", str(fixtures / "demo_model.safetensors"),
                             "-f", "json"], stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    stdout, _ = proc.communicate(timeout=60)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "analysing" in terminal
    json.loads(stdout)


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_closed_pipe_ends_quietly_with_exit_0(minilm_path: Path, fmt: str) -> None:
    """`htmp analyze ... | head -1`: no error line, no traceback, and not exit 1 (that means a failed gate)."""
    proc = subprocess.Popen([sys.executable, "-m", "htmp_cli", "analyze", str(minilm_path), "-f", fmt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert stderr == b""


def _no_analysis(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import htmp_cli.pipeline

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the analysis started before the output path was checked")

    monkeypatch.setattr(htmp_cli.pipeline, "analyze", refuse)


@pytest.mark.parametrize("args", [
    ["analyze", "{ckpt}", "-o", "{tmp}/missing/out.txt"],
    ["analyze", "{ckpt}", "-f", "json", "-o", "{tmp}"],
    ["check", "{ckpt}", "--junit", "{tmp}/missing/junit.xml"],
    ["check", "{ckpt}", "--summary", "{tmp}/missing/summary.md"],
    ["report", "{ckpt}", "-o", "{tmp}/missing/report.html"],
    ["plot", "{ckpt}", "--out", "{tmp}/a-file"],
])
def test_every_output_path_is_checked_before_any_work(fixtures: Path, tmp_path: Path, monkeypatch, args) -> None:  # type: ignore[no-untyped-def]
    _no_analysis(monkeypatch)
    (tmp_path / "a-file").write_text("")
    argv = [a.format(ckpt=fixtures / "demo_model.safetensors", tmp=tmp_path) for a in args]
    result = runner.invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "htmp: error: --" in result.output and str(tmp_path) in result.output


def test_files_that_are_not_checkpoints_are_named_for_what_they_look_like(fixtures: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert run_htmp("analyze", str(fixtures / "demo_model.safetensors"), "-f", "json", "-o", str(report)).returncode == 0
    shown = run_htmp("analyze", str(report))
    assert shown.returncode == 0 and "layers.0.attn.qkv.weight" in shown.stdout and "Summary" in shown.stdout
    assert run_htmp("analyze", str(report), "--min-dim", "3").returncode == 2
    renamed = tmp_path / "report.dat"
    renamed.write_bytes(report.read_bytes())
    assert run_htmp("analyze", str(renamed)).stdout == shown.stdout  # recognised by its content
    listed = run_htmp("ls", str(renamed))
    assert listed.returncode == 2 and "it is an htmp report (JSON)" in listed.stderr
    cases = {
        "notes.txt": "it looks like a text file",
        "data.json": "it looks like a JSON file",
        "store.sqlite": "it looks like an SQLite database",
        "run.jsonl": "it is a training log of htmp_cli.Monitor (JSON Lines): htmp trajectory",
    }
    cases["archive.zip"] = "it looks like a zip archive with no data.pkl"
    import zipfile

    with zipfile.ZipFile(tmp_path / "archive.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "data.json").write_text('{"a": 1}\n')
    (tmp_path / "run.jsonl").write_text('{"schema": "htmp.monitor/1", "htmp_version": "0.1.0", "options": {}}\n')
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(range(200)))
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    import sqlite3

    sqlite3.connect(tmp_path / "store.sqlite").execute("create table t (x)").connection.commit()
    for name, expected in cases.items():
        for command in ("analyze", "ls"):
            result = run_htmp(command, str(tmp_path / name))
            assert result.returncode == 2, (name, result.stdout)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and expected in lines[0] and "htmp reads safetensors" in lines[0], (name, lines)
            assert "exceeds" not in lines[0]
    # ONNX and HDF5 are formats htmp reads: a damaged one is refused by its reader, in one line.
    for name, expected in (("model.onnx", "not a readable ONNX model"), ("weights.h5", "not readable Keras weights")):
        for command in ("analyze", "ls"):
            result = run_htmp(command, str(tmp_path / name))
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], (name, lines)


def test_option_errors_read_cleanly(fixtures: Path) -> None:
    result = run_htmp("analyze", str(fixtures / "demo_model.safetensors"), "--precision", "float16")
    assert result.returncode == 2
    assert "Value error" not in result.stderr and "'float16' is not one of 'float64', 'float32'" in result.stderr
    for command in ("analyze", "check", "ls", "scan", "--version"):
        help_text = run_htmp(*(["--help"] if command == "--version" else [command, "--help"])).stdout
        assert "<bool>" not in help_text, command
    assert "[analysis]" in run_htmp("check", "--help").stdout and "[tool.htmp]" in run_htmp("check", "--help").stdout


def test_the_summary_names_the_failed_layers(fixtures: Path) -> None:
    result = run_htmp("analyze", str(fixtures / "bad_layers.safetensors"))
    assert result.returncode == 0
    assert "3 failed layers" in result.stdout
    assert "failed layers: has_nan.weight, has_inf.weight, zeros.weight" in result.stdout
