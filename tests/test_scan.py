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
from htmp_cli.scan.worker import Outcome
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


def test_results_stored_as_htmp_report_1_read_as_2_and_a_broken_one_is_named(zoo: Path, tmp_path: Path) -> None:
    db = tmp_path / "scan.sqlite"
    first = run_htmp("scan", str(zoo), "--db", str(db), "--export", str(tmp_path / "first.jsonl"))
    assert first.returncode == 0, first.stderr
    with sqlite3.connect(db) as con:  # as htmp wrote them before /2: no aliases, the direct orientation's mean kappa
        for fp, key, text in con.execute("SELECT fingerprint, options_key, report FROM results").fetchall():
            report = json.loads(text)
            report["schema"] = "htmp.report/1"
            report["summary"]["means"]["kappa"] = 99.0
            con.execute("UPDATE results SET report = ? WHERE fingerprint = ? AND options_key = ?", (json.dumps(report), fp, key))
        for fp, key, idx, data in con.execute("SELECT fingerprint, options_key, idx, data FROM layers").fetchall():
            layer = json.loads(data)
            del layer["aliases"]
            con.execute("UPDATE layers SET data = ? WHERE fingerprint = ? AND options_key = ? AND idx = ?",
                        (json.dumps(layer), fp, key, idx))
    again = run_htmp("scan", str(zoo), "--db", str(db), "--export", str(tmp_path / "again.jsonl"))
    assert again.returncode == 0, again.stderr
    assert "0 analysed now" in again.stdout and "99.000" not in again.stdout
    assert [r["mean_kappa"] for r in _rows(tmp_path / "again.jsonl")] == [r["mean_kappa"] for r in _rows(tmp_path / "first.jsonl")]
    with sqlite3.connect(db) as con:
        path, data = con.execute("SELECT r.path, l.data FROM layers l JOIN results r USING (fingerprint, options_key) "
                                 "WHERE l.idx = 0 LIMIT 1").fetchone()
        con.execute("UPDATE layers SET data = ? WHERE idx = 0 AND data = ?", (json.dumps({**json.loads(data), "colour": 1}), data))
    broken = run_htmp("scan", str(zoo), "--db", str(db))
    assert broken.returncode == 2
    assert f"--db {db}: the stored result of {path}: not a readable htmp report" in broken.stderr and "colour" in broken.stderr


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


@pytest.fixture(scope="module")
def slow_reference(slow_zoo: Path, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """The store of one uninterrupted scan of slow_zoo, alone on its store."""
    reference = tmp_path_factory.mktemp("reference") / "reference.sqlite"
    assert run_htmp("scan", str(slow_zoo), "--db", str(reference), "--jobs", "2", timeout=120).returncode == 0
    return reference


def _claims(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM claims").fetchone()[0]


def test_a_scan_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_result(slow_zoo: Path, slow_reference: Path,
                                                                                tmp_path: Path) -> None:
    import psutil

    reference = slow_reference
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
    assert _claims(db) > 0  # a killed scan cannot drop its claims: they are stale, its process is gone
    finish = run_htmp("scan", str(slow_zoo), "--db", str(db), "--jobs", "2", timeout=120)
    assert finish.returncode == 0, finish.stderr
    assert f"{12 - kills[-1]} analysed now" in finish.stdout
    assert "another scan" not in finish.stdout + finish.stderr
    assert _stored(db) == _stored(reference)
    assert _claims(db) == 0


def test_a_claim_holds_while_its_scan_runs_and_is_taken_over_once_it_is_gone(tmp_path: Path) -> None:
    from dataclasses import replace

    from htmp_cli.scan.store import REMOTE_STALE_SECONDS, ScanOwner, ScanStore

    failed = Outcome(status="failed", error="x", seconds=0.0, report=None)
    with ScanStore(tmp_path / "s.sqlite") as store:
        key = store.register_options(AnalysisOptions())
        me = ScanOwner.this_scan()
        assert store.claim("a", key, me, None) == ("claimed", None) == store.claim("a", key, me, None)  # ours stays ours
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        other = replace(ScanOwner.this_scan(), pid=sleeper.pid)
        other = replace(other, started=Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        try:
            assert store.claim("b", key, other, None) == ("claimed", None)
            assert store.claim("b", key, me, None) == ("held", f"pid {sleeper.pid}")
            store.save("b", key, "b.safetensors", failed, other)
            assert store.claim("b", key, me, None) == ("done", None)  # stored by its holder since this scan looked
            assert store.claim("c", key, other, None) == ("claimed", None)
            reused = replace(other, token="reused", started="1")  # the same pid, another process
            assert store.claim("d", key, reused, None) == ("claimed", None)
            assert store.claim("d", key, me, None) == ("claimed", None)
        finally:
            sleeper.kill()
        time.sleep(0.2)
        assert store.claim("c", key, me, None) == ("claimed", None)  # its scan died (a zombie until waited for)
        sleeper.wait()
        remote = replace(other, token="remote", host="elsewhere.invalid")
        assert store.claim("e", key, remote, None) == ("claimed", None)
        assert store.claim("e", key, me, None) == ("held", f"pid {sleeper.pid} on elsewhere.invalid")
        with sqlite3.connect(tmp_path / "s.sqlite") as con:  # its heartbeat stops
            con.execute("UPDATE claims SET heartbeat = heartbeat - ? WHERE token = 'remote'", (REMOTE_STALE_SECONDS + 1,))
        assert store.claim("e", key, me, None) == ("claimed", None)
        assert store.claim("f", key, other, None) == ("claimed", None)  # a dead scan's claim, left behind
        store.release(me)
    assert _claims(tmp_path / "s.sqlite") == 0


def _summary(stdout: str) -> dict[str, int]:
    """The counts of a scan's summary line: analysed now, taken from the store, by another scan."""
    import re

    line = next(line for line in stdout.splitlines() if " analysed now with " in line)
    counts = {"now": int(line.split()[0]), "store": int(re.search(r"(\d+) taken from the store", line)[1])}
    other = re.search(r"(\d+) analysed by another scan of the same store", line)
    counts["other"] = int(other[1]) if other else 0
    return counts


_WITH_TASK = "import scan_helpers as h; h.main_with_task(h.{})"  # htmp with another task in its workers


def _test_env(**extra: str) -> dict[str, str]:
    """The environment of an htmp whose workers can import scan_helpers."""
    return {**os.environ, "COLUMNS": "200", **extra,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def test_two_scans_of_one_store_share_the_work_and_each_checkpoint_is_analysed_once(
        slow_zoo: Path, slow_reference: Path, tmp_path: Path) -> None:
    db, log = tmp_path / "shared.sqlite", tmp_path / "analysed.txt"
    env = _test_env(HTMP_TEST_ANALYSED=str(log))

    def scan() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _WITH_TASK.format("counting_analyze"), "scan",
                                 str(slow_zoo), "--db", str(db), "--jobs", "1", "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    first = scan()
    deadline = time.monotonic() + 60
    while _committed(db) < 1 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.01)
    second = scan()  # the first is under way: it holds claims, has stored one result, has more to do
    outs = [proc.communicate(timeout=120) for proc in (first, second)]
    for proc, (stdout, stderr) in zip((first, second), outs):
        assert proc.returncode == 0, stderr
    counts = [_summary(stdout) for stdout, _ in outs]
    print("first:", counts[0], "second:", counts[1], "|", outs[1][1].strip())
    analysed = log.read_text().splitlines()
    assert sorted(analysed) == sorted(str(p) for p in slow_zoo.iterdir())  # each of the 12 once, by one scan or the other
    assert counts[0]["now"] + counts[1]["now"] == 12
    assert counts[0]["store"] == 0 and counts[1]["store"] >= 1
    for mine, theirs in ((counts[0], counts[1]), (counts[1], counts[0])):
        assert mine["now"] + mine["store"] + mine["other"] == 12
        assert mine["other"] <= theirs["now"]
    assert counts[1]["other"] >= 1 and counts[1]["now"] >= 1  # the second took some, and left others to the first
    assert "being analysed by another scan of" in outs[1][1] and f"(pid {first.pid})" in outs[1][1]
    assert _stored(db) == _stored(slow_reference)
    assert _claims(db) == 0


def test_a_scan_waiting_for_another_takes_over_when_that_one_is_killed(zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "four"
    folder.mkdir()
    for k, name in enumerate(("a-0", "a-1", "a-2", "hang-3")):
        (folder / f"{name}.safetensors").write_bytes((zoo / "run0" / f"step-{2 * k}.safetensors").read_bytes()
                                                     if k < 3 else (zoo / "loose.safetensors").read_bytes())
    reference = run_htmp("scan", str(folder), "--db", str(tmp_path / "reference.sqlite"), timeout=120)
    assert reference.returncode == 0, reference.stderr
    db = tmp_path / "shared.sqlite"
    first = subprocess.Popen([sys.executable, "-c", _WITH_TASK.format("hang_on_marked"), "scan", str(folder), "--db", str(db),
                              "--jobs", "1", "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_test_env())
    deadline = time.monotonic() + 60
    while _committed(db) < 3 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.01)
    assert _committed(db) == 3 and first.poll() is None  # stuck in hang-3, which it has claimed
    errors = tmp_path / "second.err"
    with open(errors, "w") as handle:
        second = subprocess.Popen([sys.executable, "-m", "htmp_cli", "scan", str(folder), "--db", str(db), "--no-progress"],
                                  stdout=subprocess.PIPE, stderr=handle, text=True, env=_test_env())
        while "waiting for its results" not in errors.read_text() and time.monotonic() < deadline and second.poll() is None:
            time.sleep(0.01)
        assert second.poll() is None
        assert f"1 checkpoint is being analysed by another scan of {db} (pid {first.pid})" in errors.read_text()
        os.kill(first.pid, signal.SIGKILL)  # not waited for yet: a zombie, which has ended all the same
        stdout, _ = second.communicate(timeout=60)
    first.wait()
    assert second.returncode == 0, errors.read_text()
    assert "the other scan stopped before analysing 1 checkpoint; analysing it here" in errors.read_text()
    assert "1 analysed now with " in stdout and "3 taken from the store; 0 failed" in stdout
    assert _stored(db) == _stored(tmp_path / "reference.sqlite")
    assert _claims(db) == 0


def _live(procs: list) -> list:
    """The processes of `procs` still running (a zombie has exited: only its parent's wait is missing)."""
    import psutil

    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture(scope="module")
def long_zoo(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """Two quick checkpoints, then two that take seconds each: a Ctrl-C after the first results lands
    while the workers are in the middle of a long analysis."""
    root = tmp_path_factory.mktemp("long_zoo")
    for k in range(2):
        _checkpoint(root / f"a-quick-{k}.safetensors", seed=k)
    for k in range(2):
        _checkpoint(root / f"b-long-{k}.safetensors", seed=k, size=(1500, 1500), layers=1)
    return root


@pytest.mark.parametrize("target, moment", [("group", "start-up"), ("group", "analysing"), ("parent", "analysing")])
def test_ctrl_c_ends_the_scan_and_its_workers_within_a_second(long_zoo: Path, tmp_path: Path, target: str, moment: str) -> None:
    """SIGINT as a terminal sends it (to the whole foreground process group) or to the scan process
    alone, while a worker is starting (importing) or while the workers are in a long analysis."""
    import psutil

    db = tmp_path / "s.sqlite"
    scan = subprocess.Popen([sys.executable, "-m", "htmp_cli", "scan", str(long_zoo), "--db", str(db), "--jobs", "2",
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    parent = psutil.Process(scan.pid)
    deadline = time.monotonic() + 60
    first_worker = None
    while time.monotonic() < deadline and scan.poll() is None:
        if moment == "start-up":
            # 0.3 s after it appears a worker is importing (that takes about a second here).
            if first_worker is None and any("spawn_main" in " ".join(c.cmdline()) for c in parent.children()):
                first_worker = time.monotonic()
            if first_worker is not None and time.monotonic() - first_worker > 0.3:
                break
        elif _committed(db) >= 2:
            break
        time.sleep(0.002)
    assert scan.poll() is None, f"the scan ended before it could be interrupted: {scan.stderr.read()}"
    assert _committed(db) == (0 if moment == "start-up" else 2)
    children = parent.children(recursive=True)
    workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    sent = time.monotonic()
    if target == "group":
        os.killpg(scan.pid, signal.SIGINT)
    else:
        os.kill(scan.pid, signal.SIGINT)
    _, stderr = scan.communicate(timeout=60)  # returns once every holder of stderr, the workers too, is gone
    latency = time.monotonic() - sent
    print(f"SIGINT to the {target} while {moment}: exit {scan.returncode} after {latency:.3f} s; {len(children)} children")
    assert scan.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.startswith("htmp scan: interrupted; ") and f"holds {_committed(db)} finished results" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert latency < 1.0, f"{latency:.2f} s from SIGINT to exit"
    assert workers and not _live(workers), f"workers still running after the scan exited: {_live(workers)}"
    # Python's resource tracker leaves when it reads the end of its pipe from the exited scan.
    while _live(children) and time.monotonic() < sent + 1.0:
        time.sleep(0.01)
    assert not _live(children), f"still running 1 s after SIGINT: {_live(children)}"


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
    failures = result.stdout.split("2 checkpoints failed:\n", 1)[1].splitlines()[:2]
    assert [line.split(": ", 1)[0] for line in failures] == ["  garbage.pt", "  truncated.safetensors"]  # as in the table
    for line, name in zip(failures, ("garbage.pt", "truncated.safetensors")):
        assert line.count(name) == 1, line  # the loader's error begins with the path: said once
    assert "neither a PyTorch zip file nor a pickle" in failures[0] and "file truncated" in failures[1]
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
    assert outcomes[2] == Outcome(status="failed", error=DIED, seconds=0.0, report=None)
    assert all(outcomes[k].status == "success" and outcomes[k].report is not None for k in (0, 1, 3, 4))


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


def test_the_html_report_shows_an_undefined_correlation_as_the_terminal_does(tmp_path: Path) -> None:
    import re

    for k in range(4):  # scaled copies: rank_loss is the same for all, its correlations are undefined
        _checkpoint(tmp_path / "zoo" / f"m{k}.safetensors", seed=0, scale=10 ** (k / 8), layers=1)
    labels = tmp_path / "labels.csv"
    labels.write_text("checkpoint,accuracy\n" + "".join(f"m{k},{0.5 + k / 20}\n" for k in range(4)))
    result = run_htmp("scan", str(tmp_path / "zoo"), "--db", str(tmp_path / "s.sqlite"), "--labels", str(labels),
                      "--report", str(tmp_path / "r.html"), timeout=120)
    assert result.returncode == 0, result.stderr
    terminal = next(line for line in result.stdout.splitlines() if "│ rank_loss " in line)
    assert [cell.strip() for cell in terminal.split("│")[3:8]] == ["4", "-", "-", "-", "-"]
    html = (tmp_path / "r.html").read_text()
    row = re.search(r"<tr><td[^>]*>accuracy</td><td[^>]*>rank_loss</td>.*?</tr>", html)
    assert row is not None
    assert re.findall(r">([^<]*)</td>", row[0])[2:] == ["4", "-", "-", "-", "-"]
    assert ">nan<" not in html


def test_a_failure_line_names_the_checkpoint_once(tmp_path: Path) -> None:
    from htmp_cli.scan.view import failure_parts
    from htmp_cli.scan.discovery import ScanUnit
    from htmp_cli.scan.runner import ScanRow
    from htmp_cli.scan.store import StoredResult

    hf = tmp_path / "zoo" / "hf"
    unit = ScanUnit(hf, (hf / "model.safetensors",))

    def parts(error: str, analysed: Path = hf) -> tuple[str, str]:
        stored = StoredResult(fingerprint="f", path=str(analysed), status="failed", error=error, n_layers=0, seconds=0.0, report=None)
        return failure_parts(ScanRow(unit=unit, fingerprint="f", result=stored, analysed_now=True), tmp_path)

    assert parts(f"{hf}: no weight file") == ("zoo/hf", "no weight file")
    assert parts(f"{hf / 'model.safetensors'}: header too long") == ("zoo/hf/model.safetensors", "header too long")
    assert parts(f"{tmp_path / 'copy'}: truncated", analysed=tmp_path / "copy") == ("zoo/hf", "truncated")  # an identical copy
    assert parts(f"{tmp_path / 'elsewhere'}: truncated") == ("zoo/hf", f"{tmp_path / 'elsewhere'}: truncated")
    assert parts("out of memory") == ("zoo/hf", "out of memory")


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
