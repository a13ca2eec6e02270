"""Opening a GGUF: htmp's header parser against the gguf package's GGUFReader, in one process run.

    python benchmarks/bench_gguf_open.py [--tokens 150000] [--mb 250]

Writes (once) benchmarks/_data/big.gguf: about 250 MB of F32 tensors behind a llama-sized
vocabulary (150,000 token strings, scores and types), the part that makes opening slow. Prints
the time to open and list the tensors with each reader, the ratio, and the time of `htmp ls` as a
user runs it (a new process, imports included).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "_data"


def _make_formats():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_formats", ROOT / "fixtures" / "make_formats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _best(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=150_000)
    parser.add_argument("--mb", type=int, default=250)
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"big_{args.tokens}_{args.mb}.gguf"
    if not path.exists():
        _make_formats().write_big_gguf(path, n_tokens=args.tokens, target_bytes=args.mb * 2**20)
    print(f"{path.name}: {path.stat().st_size / 2**20:.0f} MiB, {args.tokens:,} tokens")

    from gguf import GGUFReader

    from htmp_cli.loaders import open_checkpoint

    ours = _best(lambda: [e.shape for e in open_checkpoint(path).tensors])
    theirs = _best(lambda: [t.shape for t in GGUFReader(str(path)).tensors], repeats=1)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "htmp_cli", "ls", str(path)], check=True, stdout=subprocess.DEVNULL)
    ls_seconds = time.perf_counter() - started
    print(f"open + tensor table: htmp {ours:.3f} s, gguf.GGUFReader {theirs:.3f} s, ratio {ours / theirs:.4f}")
    print(f"`htmp ls` as a new process (interpreter start and imports included): {ls_seconds:.2f} s")


if __name__ == "__main__":
    main()
