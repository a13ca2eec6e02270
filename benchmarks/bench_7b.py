"""A 7B-parameter LLaMA-shaped checkpoint: htmp at full scale, against WeightWatcher and the bound.

    python benchmarks/bench_7b.py [--skip-full] [--skip-ww] [--blocks 4]

1. Writes (once, into benchmarks/_data/llama7b_full/, git-ignored) a checkpoint with the full
   shape of LLaMA-2-7B: embeddings and head (32000 x 4096), 32 blocks of q, k, v, o (4096 x 4096),
   gate, up (11008 x 4096), down (4096 x 11008) and the norm vectors, bf16, sharded at 5 GB with
   a Hugging Face index and config.json: 6.74e9 parameters, 13.5 GB. Even blocks hold Gaussian
   weights; odd blocks Gaussian weights with Pareto-scaled columns, whose spectra are heavy-tailed.
2. `htmp analyze FOLDER --precision float32` on all of it, as its own process: wall time, peak
   resident memory (wait4, the figure /usr/bin/time -v prints) and, from the report's timings, the
   share of the time spent outside the eigen-solves.
3. On the first `--blocks` blocks (copied byte for byte into one model.safetensors, which is what
   WeightWatcher reads), in one run: htmp (float32 and float64), WeightWatcher 0.7.7, and the lower
   bound: the bare Gram products and eigensolves of the same matrices, already decoded in memory,
   with nothing else (no reading, decoding, fits or reports), in one process with every core and
   in one process per core with one BLAS thread each. The ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_vs_weightwatcher import bf16_bytes, htmp_cmd, run_measured, write_safetensors, ww_cmd  # noqa: E402

DATA = HERE / "_data"
HIDDEN, INTERMEDIATE, VOCAB, BLOCKS = 4096, 11008, 32000, 32
SHARD_BYTES = 5 * 10**9
BLOCK_TENSORS = (  # Hugging Face's order within a block (alphabetical)
    ("input_layernorm.weight", (HIDDEN,)),
    ("mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
    ("mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
    ("mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
    ("post_attention_layernorm.weight", (HIDDEN,)),
    ("self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
    ("self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
    ("self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
    ("self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
)
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
          "intermediate_size": INTERMEDIATE, "num_attention_heads": 32, "num_hidden_layers": BLOCKS,
          "num_key_value_heads": 32, "vocab_size": VOCAB, "torch_dtype": "bfloat16"}


def llama_tensors() -> list[tuple[str, tuple[int, ...]]]:
    names = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    names += [(f"model.layers.{b}.{k}", shape) for b in range(BLOCKS) for k, shape in BLOCK_TENSORS]
    return names + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def sample(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)
    values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    block = int(name.split(".")[2]) if name.startswith("model.layers.") else 0
    if block % 2 == 1:  # heavy-tailed spectrum: columns scaled by Pareto(3) factors
        values *= (1.0 + rng.pareto(3.0, size=shape[1])).astype(np.float32)
    return values


def write_llama7b(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for name, shape in llama_tensors():
        size = int(np.prod(shape)) * 2
        if used + size > SHARD_BYTES and shards[-1]:
            shards.append([])
            used = 0
        shards[-1].append((name, shape))
        used += size
    rng = np.random.default_rng(2026)
    weight_map, total = {}, 0
    for number, tensors in enumerate(shards, 1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        print(f"  writing {file} ({len(tensors)} tensors) ...", flush=True)
        write_safetensors(folder / file, tensors, lambda name, shape: bf16_bytes(sample(name, shape, rng)))
        weight_map.update({name: file for name, _ in tensors})
        total += sum(int(np.prod(shape)) * 2 for _, shape in tensors)
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=1))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def write_subset(full: Path, target: Path, blocks: int) -> list[str]:
    """The matrices of the first `blocks` blocks, copied byte for byte into one model.safetensors."""
    from htmp_cli.loaders import open_checkpoint

    checkpoint = open_checkpoint(full)
    wanted = [e for e in checkpoint.tensors
              if e.name.startswith("model.layers.") and int(e.name.split(".")[2]) < blocks and len(e.shape) == 2]
    if not (target / "model.safetensors").exists():
        target.mkdir(parents=True, exist_ok=True)
        by_name = {e.name: e for e in wanted}
        write_safetensors(target / "model.safetensors", [(e.name, e.shape) for e in wanted],
                          lambda name, shape: checkpoint.read_stored(by_name[name])[0].tobytes())
    return [e.name for e in wanted]


# The lower bound, run as its own process: decode every matrix first (untimed), then time only the
# Gram products and eigensolves, exactly the calls htmp makes for them.
BOUND_SCRIPT = r"""
import json, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing

def solve_all(args):
    path, names, precision, threads = args
    import os
    if threads == 1:
        os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    import numpy as np, torch
    from threadpoolctl import threadpool_limits
    from htmp_cli.loaders import open_checkpoint
    from htmp_cli.spectral import gram_matrix, spectrum_of
    if threads == 1:
        threadpool_limits(1); torch.set_num_threads(1)
    checkpoint = open_checkpoint(path)
    entries = {e.name: e for e in checkpoint.tensors}
    spent = 0.0
    for name in names:
        W = checkpoint.read(entries[name]).astype(np.float32 if precision == "float32" else np.float64)
        started = time.perf_counter()
        spectrum_of(gram_matrix(W, precision), "torch")
        spent += time.perf_counter() - started
    return spent

if __name__ == "__main__":
    path, precision, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    names = json.loads(sys.argv[4])
    if workers == 1:
        print(json.dumps({"seconds": solve_all((path, names, precision, 0))}))
    else:
        # Work-balanced by the same round-robin over layers htmp's pool effectively does.
        parts = [(path, names[i::workers], precision, 1) for i in range(workers)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            print(json.dumps({"seconds": max(pool.map(solve_all, parts))}))
"""


def bound_seconds(path: Path, names: list[str], precision: str, workers: int) -> float:
    script = Path(tempfile.mkdtemp()) / "bound.py"
    script.write_text(BOUND_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(path), precision, str(workers), json.dumps(names)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bound script failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)["seconds"]


def run_tree_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds, and the peak of the summed resident memory of the process and its workers
    (sampled every 50 ms; shared library pages count once per process, so this overstates)."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parent = psutil.Process(proc.pid)
    peak_sum = 0
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak_sum = max(peak_sum, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return wall, peak_sum


def htmp_run(path: Path, *extra: str) -> tuple[float, int, dict]:
    out = Path(tempfile.mkdtemp()) / "report.json"
    cmd = htmp_cmd(path, *extra)
    cmd[cmd.index(os.devnull)] = str(out)
    wall, rss = run_tree_measured(cmd)
    return wall, rss, json.loads(out.read_text())


def describe(report: dict, wall: float) -> str:
    t, workers = report["summary"]["timings"], report["summary"].get("workers", 1)
    layer_time = t["read"] + t["eigen"] + t["fit"]
    outside = 1 - t["eigen"] / layer_time
    covered = min(1.0, t["eigen"] / workers / wall)
    return (f"{workers} worker process(es); summed over layers: read {t['read']:.1f} s, eigen {t['eigen']:.1f} s, "
            f"fit {t['fit']:.1f} s -> outside the eigen-solves {100 * outside:.1f}% of layer time; "
            f"eigen-solves / workers cover {100 * covered:.1f}% of the wall time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-full", action="store_true", help="leave out step 2 (the whole 7B analysis)")
    parser.add_argument("--skip-ww", action="store_true", help="leave out WeightWatcher in step 3")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--jobs", default=None, help="pass --jobs to htmp (default: htmp's own choice)")
    args = parser.parse_args()
    extra = ("--jobs", args.jobs) if args.jobs else ()
    full = DATA / "llama7b_full"
    if not (full / "model.safetensors.index.json").exists():
        print(f"writing {full} ...", flush=True)
        started = time.perf_counter()
        write_llama7b(full)
        print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
    size = sum(f.stat().st_size for f in full.glob("*.safetensors"))
    cpus = len(os.sched_getaffinity(0))
    print(f"7B LLaMA-shaped checkpoint: {full} ({size / 1e9:.1f} GB bf16, {cpus} usable cores)", flush=True)
    if not args.skip_full:
        wall, rss, report = htmp_run(full, "--precision", "float32", *extra)
        layers = report["summary"]["n_layers"]
        print(f"(1) htmp analyze FOLDER --precision float32: {layers} matrices, {wall:.1f} s, "
              f"peak RSS {rss / 2**20:.0f} MiB (all processes together)", flush=True)
        print(f"    {describe(report, wall)}", flush=True)
    subset = DATA / f"llama7b_first{args.blocks}"
    names = write_subset(full, subset, args.blocks)
    path = subset / "model.safetensors"
    print(f"(2) first {args.blocks} blocks: {len(names)} matrices, {path.stat().st_size / 1e9:.2f} GB bf16", flush=True)
    results = {}
    for precision in ("float32", "float64"):
        wall, rss, report = htmp_run(path, "--precision", precision, *extra)
        seq = bound_seconds(path, names, precision, 1)
        par = bound_seconds(path, names, precision, cpus) if cpus > 1 else seq
        bound = min(seq, par)
        results[precision] = wall
        print(f"    htmp {precision}: {wall:7.1f} s, peak RSS {rss / 2**20:5.0f} MiB (all processes); bare eigen-solves: "
              f"{seq:.1f} s in one process, {par:.1f} s in {cpus} processes; htmp / bound = {wall / bound:.3f}",
              flush=True)
        print(f"      {describe(report, wall)}", flush=True)
    if not args.skip_ww:
        w, rssw = run_measured(ww_cmd(subset, Path(tempfile.mkdtemp()) / "ww.json"))
        print(f"    WeightWatcher 0.7.7: {w:7.1f} s, peak RSS {rssw / 2**20:5.0f} MiB; htmp / WW: "
              f"float32 {results['float32'] / w:.3f}, float64 {results['float64'] / w:.3f}", flush=True)


if __name__ == "__main__":
    main()
