"""Streaming: peak memory follows the largest matrix, not the file; fixtures regenerate bit for bit."""

from __future__ import annotations

import filecmp
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "subprocess.run([sys.executable, '-m', 'htmp_cli', *sys.argv[1:]], check=True, stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
)


def _peak_rss(*args: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, *args], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _write_big_checkpoint(path: Path, n_tensors: int, shape: tuple[int, int]) -> int:
    names = [f"layers.{i}.weight" for i in range(n_tensors)]
    nbytes = shape[0] * shape[1] * 4
    header = {name: {"dtype": "F32", "shape": list(shape), "data_offsets": [i * nbytes, (i + 1) * nbytes]}
              for i, name in enumerate(names)}
    raw = json.dumps(header).encode()
    rng = np.random.default_rng(0)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for _ in names:
            handle.write(rng.standard_normal(shape, dtype=np.float32).tobytes())
    return path.stat().st_size


def test_peak_memory_follows_the_largest_matrix_not_the_file(tmp_path: Path, fixtures: Path) -> None:
    big = tmp_path / "big.safetensors"
    size = _write_big_checkpoint(big, n_tensors=24, shape=(512, 8192))  # 16 MB each, 384 MB in all
    baseline = _peak_rss("analyze", str(fixtures / "demo_model.safetensors"), "-f", "json")
    peak = _peak_rss("analyze", str(big), "-f", "json")
    growth = peak - baseline
    # One 16 MB tensor, its float64 copy and the Gram matrix: far below the 384 MB file.
    assert growth < size / 3, (growth / 2**20, size / 2**20)


def test_fixtures_regenerate_bit_for_bit(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "fixtures" / "make_fixtures.py"), str(tmp_path)], check=True)
    committed = sorted(p.relative_to(ROOT / "fixtures") for p in (ROOT / "fixtures").rglob("*")
                       if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert committed == fresh
    for rel in committed:
        assert filecmp.cmp(ROOT / "fixtures" / rel, tmp_path / rel, shallow=False), rel
