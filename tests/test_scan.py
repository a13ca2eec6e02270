"""htmp scan: discovery, the resumable store (really killed with SIGKILL), failure isolation, Dask,
labels and their correlations, export; and htmp diff."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_htmp
from safetensors.numpy import save_file
from scipy import stats

from htmp_cli.options import AnalysisOptions
from htmp_cli.scan.discovery import discover, fingerprint_files
from htmp_cli.scan.executors import DIED, LocalExecutor
from htmp_cli.scan.labels import correlations
from htmp_cli.synthetic import phase_layer

PHASES = ("bulk+spikes", "heavy-tailed", "random-like", "bulk-decay")


def _checkpoint(path: Path, seed: int, scale: float = 1.0, size: tuple[int, int] = (300, 150), layers: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    weights = {f"layers.{k}.weight": (scale * phase_layer(PHASES[(seed + k) % 4], *size, rng)).astype(np.float32)
               for k in range(layers)}
    weights["layers.0.bias"] = np.zeros(size[0], dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """Eight small checkpoints in nested folders, one of them a Hugging Face folder."""
    root = tmp_path_factory.mktemp("zoo")
    for k in range(6):
        _checkpoint(root / f"run{k % 2}" / f"step-{k}.safetensors", seed=k)
    _checkpoint(root / "hf" / "model.safetensors", seed=6)
    (root / "hf" / "config.json").write_text("{}")  # part of the Hugging Face folder
    _checkpoint(root / "loose.safetensors", seed=7)
    (root / "README.md").write_text("not a checkpoint")
    return root


def _rows(export: Path) -> list[dict]:
    return [json.loads(line) for line in export.read_text().splitlines()]


def _without_timings(value):  # type: ignore[no-untyped-def]
    """A result with every wall-clock figure removed: what must be identical between two scans."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("timings", "seconds")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _stored(db: Path) -> dict[str, list]:
    """Every result and layer row of a store, keyed by fingerprint, timings removed."""
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        results = {fp: (status, _without_timings(json.loads(report)) if report else None)
                   for fp, status, report in con.execute("SELECT fingerprint, status, report FROM results")}
        layers: dict[str, list] = {}
        for fp, idx, data in con.execute("SELECT fingerprint, idx, data FROM layers ORDER BY fingerprint, idx"):
            layers.setdefault(fp, []).append((idx, _without_timings(json.loads(data))))
    return {fp: [results[fp], layers.get(fp, [])] for fp in results}


def test_discovery_finds_files_folders_globs_and_list_files(zoo: Path, tmp_path: Path) -> None:
    found = discover([str(zoo)])
    names = sorted(str(u.path.relative_to(zoo)) for u in found.units)
    assert names == ["hf", "loose.safetensors", "run0/step-0.safetensors", "run0/step-2.safetensors",
                     "run0/step-4.safetensors", "run1/step-1.safetensors", "run1/step-3.safetensors",
                     "run1/step-5.safetensors"]
    assert [p.name for p in found.ignored] == ["README.md"]
    hf = next(u for u in found.units if u.path.name == "hf")
    assert hf.files == (zoo / "hf" / "model.safetensors",)
    assert len(discover([str(zoo / "run*" / "*.safetensors")]).units) == 6
    listing = tmp_path / "runs.txt"
    listing.write_text(f"# two checkpoints\n{zoo / 'loose.safetensors'}\n\n{zoo / 'hf'}\n")
    assert [u.path.name for u in discover([f"@{listing}"]).units] == ["loose.safetensors", "hf"]
    assert len(discover([str(listing), str(zoo / "hf")]).units) == 2  # the same folder twice is one checkpoint
    for bad in ([str(tmp_path / "missing")], [str(zoo / "nothing-*.pt")]):
        with pytest.raises(Exception, match="no such file|matches nothing"):
            discover(bad)


def test_discovery_joins_the_shards_of_an_index(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "sharded" / "model-00001-of-00002.safetensors", seed=1, layers=1)
    b = _checkpoint(tmp_path / "sharded" / "model-00002-of-00002.safetensors", seed=2, layers=1)
    (tmp_path / "sharded" / "weights.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x": a.name, "y": b.name}}))
    units = discover([str(tmp_path)]).units
    assert [u.path.name for u in units] == ["weights.safetensors.index.json"]
    assert [f.name for f in units[0].files] == ["weights.safetensors.index.json", a.name, b.name]


def test_fingerprints_follow_content_not_names(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a.safetensors", seed=1)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(a.read_bytes())
    units = {u.path.name: u for u in discover([str(tmp_path)]).units}
    assert fingerprint_files(units["a.safetensors"]) != fingerprint_files(units["copy.safetensors"])  # the name is hashed
    data = bytearray(a.read_bytes())
    data[-5] ^= 1  # one bit of the last weight
    b = tmp_path / "b" / "a.safetensors"
    b.parent.mkdir()
    b.write_bytes(bytes(data))
    (unit_b,) = discover([str(b)]).units
    assert fingerprint_files(unit_b) != fingerprint_files(units["a.safetensors"])
    a2 = tmp_path / "c" / "a.safetensors"
    a2.parent.mkdir()
    a2.write_bytes(a.read_bytes())
    assert fingerprint_files(discover([str(a2)]).units[0]) == fingerprint_files(units["a.safetensors"])


def test_a_rerun_analyses_nothing_and_force_redoes_everything(zoo: Path, tmp_path: Path) -> None:
    db = tmp_path / "scan.sqlite"
    first = run_htmp("scan", str(zoo), "--db", str(db), "--jobs", "2", "--export", str(tmp_path / "first.jsonl"))
    assert first.returncode == 0, first.stderr
    assert "8 analysed now with 2 local processes, 0 taken from the store; 0 failed" in first.stdout
    stored = _stored(db)
    again = run_htmp("scan", str(zoo), "--db", str(db), "--export", str(tmp_path / "again.jsonl"))
    assert again.returncode == 0, again.stderr
    assert "0 analysed now" in again.stdout and "8 taken from the store" in again.stdout
    assert _stored(db) == stored
    assert _rows(tmp_path / "again.jsonl") == _rows(tmp_path / "first.jsonl")
    forced = run_htmp("scan", str(zoo), "--db", str(db), "--force", "--jobs", "1")
    assert "8 analysed now" in forced.stdout
    assert _stored(db) == stored  # replaced, not duplicated
    changed = run_htmp("scan", str(zoo), "--db", str(db), "--min-dim", "160")
    assert "8 analysed now" in changed.stdout  # other options, other results
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 16


def _scan_process(zoo: Path, db: Path, jobs: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "htmp_cli", "scan", str(zoo), "--db", str(db), "--jobs", str(jobs),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _committed(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.fixture(scope="module")
def slow_zoo(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """Twelve checkpoints that take a good fraction of a second each, so a kill lands mid-scan."""
    root = tmp_path_factory.mktemp("slow_zoo")
    for k in range(12):
        _checkpoint(root / f"ckpt-{k:02d}.safetensors", seed=k, size=(500, 250), layers=4)
    return root


def test_a_scan_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_result(slow_zoo: Path, tmp_path: Path) -> None:
    import psutil

    reference = tmp_path / "reference.sqlite"
    assert run_htmp("scan", str(slow_zoo), "--db", str(reference), "--jobs", "2").returncode == 0
    db = tmp_path / "killed.sqlite"
    kills = []
    # Kill at three moments: during start-up (before any commit), after the first commit, after a few more.
    for wait_for in (None, 1, 4):
        scan = _scan_process(slow_zoo, db, jobs=2)
        workers: list = []
        deadline = time.monotonic() + 120
        if wait_for is None:
            time.sleep(0.3)
        else:
            before = _committed(db)
            while _committed(db) < before + wait_for and time.monotonic() < deadline and scan.poll() is None:
                workers = psutil.Process(scan.pid).children(recursive=True) or workers
                time.sleep(0.02)
        workers = psutil.Process(scan.pid).children(recursive=True) or workers if scan.poll() is None else workers
        os.kill(scan.pid, signal.SIGKILL)
        scan.wait()
        kills.append(_committed(db))
        # Workers of a killed scan notice and exit on their own.
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"orphaned workers still running: {alive}"
    print("committed at each kill:", kills)
    assert kills[-1] < 12, f"the scan finished before it could be killed ({kills})"
    assert kills[1] >= 1
    finish = run_htmp("scan", str(slow_zoo), "--db", str(db), "--jobs", "2")
    assert finish.returncode == 0, finish.stderr
    assert f"{12 - kills[-1]} analysed now" in finish.stdout
    assert _stored(db) == _stored(reference)


def test_a_corrupt_checkpoint_is_recorded_and_the_scan_goes_on(zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("loose.safetensors",):
        (folder / name).write_bytes((zoo / name).read_bytes())
    (folder / "truncated.safetensors").write_bytes((zoo / "loose.safetensors").read_bytes()[:5000])
    (folder / "garbage.pt").write_bytes(b"not a checkpoint at all")
    db = tmp_path / "scan.sqlite"
    result = run_htmp("scan", str(folder), "--db", str(db), "--export", str(tmp_path / "out.csv"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "2 checkpoints failed:" in result.stdout
    assert "garbage.pt: " in result.stdout and "truncated.safetensors: " in result.stdout
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = {Path(r["checkpoint"]).name: r for r in csv.DictReader(handle)}
    assert rows["loose.safetensors"]["status"] == "success" and rows["loose.safetensors"]["n_layers"] == "3"
    assert rows["truncated.safetensors"]["status"] == "failed" and "truncated.safetensors" in rows["truncated.safetensors"]["error"]
    # Failures are results too: a re-run does not retry them unless asked.
    again = run_htmp("scan", str(folder), "--db", str(db))
    assert again.returncode == 3 and "0 analysed now" in again.stdout
    retried = run_htmp("scan", str(folder), "--db", str(db), "--retry-failed")
    assert retried.returncode == 3 and "2 analysed now" in retried.stdout


def test_a_checkpoint_that_kills_its_worker_fails_alone(zoo: Path, tmp_path: Path) -> None:
    import scan_helpers

    paths = sorted(str(p) for p in zoo.rglob("step-*.safetensors"))[:4]
    crash = tmp_path / "crash.safetensors"
    crash.write_bytes(Path(paths[0]).read_bytes())
    tasks = [(k, p) for k, p in enumerate(paths[:2] + [str(crash)] + paths[2:])]
    executor = LocalExecutor(2, task=scan_helpers.crash_on_marked)
    outcomes = dict(executor.run(tasks, AnalysisOptions(), lambda *_: None))
    assert sorted(outcomes) == [0, 1, 2, 3, 4]
    assert outcomes[2] == {"status": "failed", "error": DIED, "seconds": 0.0, "report": None}
    assert all(outcomes[k]["status"] == "success" for k in (0, 1, 3, 4))


def test_the_dask_path_gives_the_local_results(zoo: Path, tmp_path: Path) -> None:
    from distributed import LocalCluster

    local = run_htmp("scan", str(zoo), "--db", str(tmp_path / "local.sqlite"), "--export", str(tmp_path / "local.jsonl"),
                     "--export-rows", "layer")
    assert local.returncode == 0, local.stderr
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = run_htmp("scan", str(zoo), "--db", str(tmp_path / "dask.sqlite"), "--scheduler", cluster.scheduler_address,
                          "--export", str(tmp_path / "dask.jsonl"), "--export-rows", "layer")
    assert remote.returncode == 0, remote.stderr
    assert f"the Dask scheduler at {cluster.scheduler_address} (2 workers)" in remote.stdout
    local_rows, dask_rows = _rows(tmp_path / "local.jsonl"), _rows(tmp_path / "dask.jsonl")
    assert len(local_rows) == 24
    assert _without_timings(dask_rows) == _without_timings(local_rows)
    assert _stored(tmp_path / "dask.sqlite") == _stored(tmp_path / "local.sqlite")


def test_scheduler_local_starts_its_own_cluster(zoo: Path, tmp_path: Path) -> None:
    result = run_htmp("scan", str(zoo / "run0"), "--db", str(tmp_path / "s.sqlite"), "--scheduler", "local", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert "3 analysed now with a Dask LocalCluster (2 workers)" in result.stdout


def test_labels_give_rank_correlations_and_a_scatter_plot(tmp_path: Path) -> None:
    # Checkpoint k is checkpoint 0 scaled by 10^(k/8): its mean log_norm is exactly k/4 higher and its
    # alpha unchanged, so log_norm ranks the "accuracy" k perfectly and alpha not at all.
    for k in range(6):
        _checkpoint(tmp_path / "zoo" / f"m{k}.safetensors", seed=0, scale=10 ** (k / 8))
    labels = tmp_path / "labels.csv"
    labels.write_text("checkpoint,accuracy,loss\n" + "".join(f"m{k},{0.5 + k / 20},{6 - k}\n" for k in range(6))
                      + "elsewhere.safetensors,0.1,1\n")
    plot = tmp_path / "best.png"
    result = run_htmp("scan", str(tmp_path / "zoo"), "--db", str(tmp_path / "s.sqlite"), "--labels", str(labels),
                      "--plot", str(plot), "--export", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stderr
    assert "1 rows match no scanned checkpoint: elsewhere.safetensors" in result.stdout
    lines = [line for line in result.stdout.splitlines() if "│ accuracy" in line or "│ loss" in line]
    top = [line.split("│")[1:6] for line in lines[:4]]
    assert {(cells[0].strip(), cells[1].strip()) for cells in top} <= {
        (label, metric) for label in ("accuracy", "loss") for metric in ("log_norm", "log_spectral_norm", "log_alpha_norm", "alpha_weighted")}
    assert all(cells[3].strip() in ("+1.000", "-1.000") for cells in top)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["accuracy"]) for r in rows] == [0.5 + k / 20 for k in range(6)]
    log_norms = [float(r["mean_log_norm"]) for r in rows]
    assert np.allclose(np.diff(log_norms), 0.25, atol=1e-9)


def test_correlations_are_scipys_and_sorted_strongest_first() -> None:
    rng = np.random.default_rng(3)
    metrics = [{"alpha": float(a), "log_norm": float(b), "kappa": 1.0} for a, b in rng.normal(size=(10, 2))]
    labels = [{"acc": m["alpha"] * 2 + 0.3 * rng.normal()} for m in metrics]
    found = correlations(metrics, labels, ("acc",))
    assert [c.metric for c in found][:2] == ["alpha", "log_norm"] and found[-1].metric == "kappa"
    x, y = [m["alpha"] for m in metrics], [lab["acc"] for lab in labels]
    assert found[0].spearman_rho == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert found[0].n == 10
    assert found[0].kendall_p == pytest.approx(stats.kendalltau(x, y)[1], abs=1e-12)
    assert np.isnan(found[-1].spearman_rho)  # a constant metric has no ranking
    # Up to 9 checkpoints the p-value is exact: a perfect ranking of 4 happens by chance 1 time in 24 each way.
    four = correlations([{"alpha": a} for a in (1.0, 2.0, 3.0, 4.0)], [{"acc": v} for v in (0.1, 0.5, 0.6, 0.9)], ("acc",))
    assert four[0].spearman_rho == 1.0 and four[0].spearman_p == pytest.approx(1 / 12)
    assert four[0].kendall_p == pytest.approx(1 / 12)
    eight = correlations([{"alpha": float(a)} for a in range(8)], [{"acc": float(-a)} for a in range(8)], ("acc",))
    assert eight[0].spearman_rho == -1.0 and eight[0].spearman_p == pytest.approx(2 / 40320)
    big = correlations(metrics, labels, ("acc",))  # n = 10: scipy's approximation
    assert big[0].spearman_p == pytest.approx(stats.spearmanr(x, y)[1], rel=1e-12)


def test_export_per_layer_and_per_checkpoint(zoo: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "s.sqlite")
    assert run_htmp("scan", str(zoo), "--db", db, "--export", str(tmp_path / "c.csv")).returncode == 0
    assert run_htmp("scan", str(zoo), "--db", db, "--export", str(tmp_path / "l.csv"), "--export-rows", "layer").returncode == 0
    assert run_htmp("scan", str(zoo), "--db", db, "--export", str(tmp_path / "c.jsonl")).returncode == 0
    with open(tmp_path / "c.csv", newline="") as handle:
        per_checkpoint = list(csv.DictReader(handle))
    with open(tmp_path / "l.csv", newline="") as handle:
        per_layer = list(csv.DictReader(handle))
    assert len(per_checkpoint) == 8 and len(per_layer) == 24
    assert {"checkpoint", "fingerprint", "status", "mean_alpha", "phase_heavy-tailed"} <= set(per_checkpoint[0])
    assert {"checkpoint", "name", "alpha", "kappa", "phase_name"} <= set(per_layer[0])
    records = _rows(tmp_path / "c.jsonl")
    assert [r["checkpoint"] for r in records] == [r["checkpoint"] for r in per_checkpoint]
    assert all(r["summary"]["n_layers"] == 3 for r in records)
    bad = run_htmp("scan", str(zoo), "--db", db, "--export", str(tmp_path / "out.xlsx"))
    assert bad.returncode == 2 and "must end in .csv or .jsonl" in bad.stderr


def test_scan_usage_errors_come_before_any_work(tmp_path: Path) -> None:
    for args, message in ((["--labels", str(tmp_path / "none.csv")], "--labels"),
                          (["--plot", str(tmp_path / "p.png")], "needs --labels"),
                          (["--jobs", "0"], "--jobs must be at least 1")):
        result = run_htmp("scan", str(tmp_path / "nothing-here"), "--db", str(tmp_path / "s.sqlite"), *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_htmp("scan", str(empty), "--db", str(tmp_path / "s.sqlite"))
    assert result.returncode == 2 and "no checkpoints found" in result.stderr
    (tmp_path / "not-a-db.sqlite").write_text("hello")
    _checkpoint(empty / "a.safetensors", seed=1, layers=1)
    result = run_htmp("scan", str(empty), "--db", str(tmp_path / "not-a-db.sqlite"))
    assert result.returncode == 2 and "not a usable htmp scan store" in result.stderr


def test_diff_reports_every_metric_and_the_layers_that_changed_phase(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    base = {f"layers.{k}.weight": phase_layer("bulk+spikes", 400, 200, rng).astype(np.float32) for k in range(3)}
    base["layers.gone.weight"] = phase_layer("bulk+spikes", 400, 200, rng).astype(np.float32)
    later = dict(base)
    later["layers.0.weight"] = (base["layers.0.weight"] * 10**0.25).astype(np.float32)  # log10 norms +0.5
    later["layers.1.weight"] = phase_layer("random-like", 400, 200, rng).astype(np.float32)
    del later["layers.gone.weight"]
    later["layers.new.weight"] = phase_layer("bulk+spikes", 400, 200, rng).astype(np.float32)
    save_file(base, str(tmp_path / "a.safetensors"))
    save_file(later, str(tmp_path / "b.safetensors"))
    result = run_htmp("diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert set(layers) == {"layers.0.weight", "layers.1.weight", "layers.2.weight"}
    assert data["only_before"] == ["layers.gone.weight"] and data["only_after"] == ["layers.new.weight"]
    scaled = layers["layers.0.weight"]["metrics"]
    assert scaled["log_spectral_norm"]["delta"] == pytest.approx(0.5, abs=1e-6)
    assert scaled["log_norm"]["delta"] == pytest.approx(0.5, abs=1e-6)  # log10 of the squared Frobenius norm
    assert scaled["alpha"]["delta"] == pytest.approx(0.0, abs=1e-6)
    assert layers["layers.2.weight"]["metrics"]["alpha"]["delta"] == 0.0
    assert [name for name, layer in layers.items() if layer["phase_changed"]] == ["layers.1.weight"]
    assert layers["layers.1.weight"]["phase_before"] == "bulk+spikes" and layers["layers.1.weight"]["phase_after"] == "random-like"
    assert len(scaled) >= 20  # every metric
    # Saved reports give the same diff; the table marks the phase change.
    for name in ("a", "b"):
        saved = run_htmp("analyze", str(tmp_path / f"{name}.safetensors"), "-f", "json", "-o", str(tmp_path / f"{name}.json"))
        assert saved.returncode == 0
    from_reports = run_htmp("diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--format", "json")
    assert [layer["metrics"] for layer in json.loads(from_reports.stdout)["layers"]] == [layer["metrics"] for layer in data["layers"]]
    table = run_htmp("diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--changed-only")
    assert "bulk+spikes -> random-like" in table.stdout and "layers.0.weight" not in table.stdout
    assert "3 layers in both, 1 changed phase" in table.stdout and "only in before (1): layers.gone.weight" in table.stdout
    misuse = run_htmp("diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--precision", "float32")
    assert misuse.returncode == 2 and "saved reports" in misuse.stderr
    unknown = run_htmp("diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--metric", "beauty")
    assert unknown.returncode == 2 and "unknown" in unknown.stderr
    csv_view = run_htmp("diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--format", "csv")
    assert csv_view.stdout.splitlines()[0].startswith("name,phase_before,phase_after,phase_changed,alpha_before")


def test_the_zoo_script_trains_labelled_networks_that_scan_correlates(tmp_path: Path) -> None:
    made = subprocess.run([sys.executable, str(ROOT / "fixtures" / "make_zoo.py"), str(tmp_path / "zoo"), "--quick"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    with open(tmp_path / "zoo" / "labels.csv", newline="") as handle:
        labels = list(csv.DictReader(handle))
    assert [row["checkpoint"] for row in labels] == ["zoo-01.safetensors", "zoo-02.safetensors", "zoo-03.safetensors"]
    assert all(0.0 <= float(row["test_accuracy"]) <= 1.0 for row in labels)
    result = run_htmp("scan", str(tmp_path / "zoo"), "--db", str(tmp_path / "s.sqlite"), "--labels", str(tmp_path / "zoo" / "labels.csv"))
    assert result.returncode == 0, result.stderr
    assert "rank correlation of each summary metric with each label" in result.stdout
    assert (tmp_path / "s-correlation.png").is_file()


def test_progress_over_checkpoints_and_layers_on_a_terminal(slow_zoo: Path, tmp_path: Path) -> None:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "htmp_cli", "scan", str(slow_zoo), "--db", str(tmp_path / "s.sqlite")],
                            stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "TERM": "xterm", "COLUMNS": "160"})
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # read as it comes: a full pseudo-terminal buffer would block the scan
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    import threading

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "scanning" in terminal and "layers" in terminal and "/12" in terminal and "/4" in terminal
    assert b"12 analysed now" in stdout
