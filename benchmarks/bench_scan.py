"""Scan throughput with 1 and 2 worker processes, and the time of a re-run, in one process run.

    python benchmarks/bench_scan.py [--synthetic N]

Two zoos: the digits zoo of fixtures/make_zoo.py (16 trained MLPs, made if missing) and N synthetic
checkpoints of four 500 x 250 layers each (default 40), written to benchmarks/_data/. Each scan is a
fresh `htmp scan` process with a fresh store, timed from outside (process start-up included); the
re-run reuses the store of the 2-worker scan.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "_data"


def ensure_digits_zoo() -> Path:
    zoo = DATA / "zoo"
    if not (zoo / "labels.csv").is_file():
        subprocess.run([sys.executable, str(ROOT / "fixtures" / "make_zoo.py"), str(zoo)], check=True)
    return zoo


def ensure_synthetic_zoo(count: int) -> Path:
    from safetensors.numpy import save_file

    from htmp_cli.synthetic import phase_layer

    zoo = DATA / f"synthetic_zoo_{count}"
    if len(list(zoo.glob("*.safetensors"))) != count:
        zoo.mkdir(parents=True, exist_ok=True)
        phases = ("bulk+spikes", "heavy-tailed", "random-like", "bulk-decay")
        for k in range(count):
            rng = np.random.default_rng(k)
            layers = {f"layers.{j}.weight": phase_layer(phases[(k + j) % 4], 500, 250, rng).astype(np.float32) for j in range(4)}
            save_file(layers, str(zoo / f"synthetic-{k:03d}.safetensors"))
    return zoo


def timed_scan(zoo: Path, db: Path, jobs: int) -> tuple[float, float]:
    """Wall time of the whole process, and the scan's own time (after start-up: discovery to last result)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "htmp_cli", "scan", str(zoo), "--db", str(db), "--jobs", str(jobs),
                             "--no-progress"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"htmp scan failed ({result.returncode}): {result.stderr}")
    line = next(line for line in result.stdout.splitlines() if " analysed now with " in line)
    return elapsed, float(line.rsplit(";", 1)[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", type=int, default=40, help="number of synthetic checkpoints")
    args = parser.parse_args()
    zoos = {"digits zoo (16 MLPs)": ensure_digits_zoo(),
            f"synthetic ({args.synthetic} x 4 layers 500x250)": ensure_synthetic_zoo(args.synthetic)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "htmp_cli", "--version"], capture_output=True, check=True)
    print(f"start-up of an htmp process that does nothing: {time.perf_counter() - started:.2f} s")
    print("process wall time (scan's own time, discovery to last result, in brackets)")
    print(f"{'zoo':38} {'1 worker':>16} {'2 workers':>16} {'speed-up':>15} {'re-run':>15} {'re-run / first':>15}")
    with tempfile.TemporaryDirectory() as scratch:
        for name, zoo in zoos.items():
            one, one_own = timed_scan(zoo, Path(scratch) / f"{zoo.name}-1.sqlite", 1)
            two_db = Path(scratch) / f"{zoo.name}-2.sqlite"
            two, two_own = timed_scan(zoo, two_db, 2)
            rerun, rerun_own = timed_scan(zoo, two_db, 2)
            print(f"{name:38} {one:6.2f}s ({one_own:5.2f}s) {two:6.2f}s ({two_own:5.2f}s) {one / two:5.2f}x ({one_own / two_own:4.2f}x) "
                  f"{rerun:5.2f}s ({rerun_own:4.2f}s) {rerun / one:6.3f} ({rerun_own / one_own:5.3f})")


if __name__ == "__main__":
    main()
