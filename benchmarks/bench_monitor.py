"""The Monitor's overhead on a training run, and `htmp trajectory` on a run of 50 checkpoints.

    .venv/bin/python benchmarks/bench_monitor.py [--repeats 5] [--steps 2000] [--batches 16 256]

Overhead: the 64-256-256-256-10 MLP of benchmarks/batch_size_study.py trained on scikit-learn's
digits (SGD, learning rate 0.2, at each batch size; torch on one thread, the other core left to the
monitor's helper), with no monitor, with `Monitor(model, every=100)` in the foreground and with
`background=True`, each in its own process and interleaved; the overhead is the extra wall time
of the whole run over the run without a monitor, measured in the same round.

Trajectory: the same training with a checkpoint saved every 36 steps (50 checkpoints), then
`htmp trajectory` over the folder twice (fresh store, then the store's results), against
WeightWatcher 0.7.7's `analyze()` on each of the 50 checkpoints (its own process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_TRAIN = r'''
import json, sys, time
import numpy as np, torch
from sklearn.datasets import load_digits
torch.set_num_threads(1)
mode, steps, batch_size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
digits = load_digits()
x = torch.from_numpy((digits.data / 16.0).astype(np.float32)); y = torch.from_numpy(digits.target)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                            torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
generator = torch.Generator().manual_seed(0)
if mode in ("foreground", "background"):
    import htmp_cli
    monitor = htmp_cli.Monitor(model, every=100, background=mode == "background")
else:
    monitor = None
if mode == "checkpoints":
    from safetensors.torch import save_file
started = time.perf_counter()
step = 0
while step < steps:
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        step += 1
        if monitor is not None:
            monitor.step(step)
        if mode == "checkpoints" and step % 36 == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/model_step{step:05d}.safetensors")
        if step >= steps:
            break
loop = time.perf_counter() - started
if monitor is not None:
    monitor.close()  # the background's last analyses finish here
total = time.perf_counter() - started
print(json.dumps({"loop": loop, "total": total, "steps": step,
                  "waited": monitor.waited_seconds if monitor is not None else 0.0}))
'''

_WW = r'''
import json, sys, time
from pathlib import Path
import torch
from safetensors.torch import load_file
import weightwatcher
started = time.perf_counter()
for path in sorted(Path(sys.argv[1]).glob("*.safetensors")):
    weights = load_file(str(path))
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    model.load_state_dict(weights)
    weightwatcher.WeightWatcher(model=model).analyze()
print(json.dumps({"seconds": time.perf_counter() - started}))
'''


def _train(mode: str, steps: int, batch_size: int, out: str = "") -> dict:
    done = subprocess.run([sys.executable, "-c", _TRAIN, mode, str(steps), str(batch_size), out], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 256])
    args = parser.parse_args()
    for batch_size in args.batches:
        runs: dict[str, list[dict]] = {"none": [], "foreground": [], "background": []}
        for _ in range(args.repeats):  # interleaved, so that a noisy moment hits every mode alike
            for mode in runs:
                runs[mode].append(_train(mode, args.steps, batch_size))
        base = [r["total"] for r in runs["none"]]
        print(f"Training: {args.steps} steps of batch {batch_size}, Monitor(every=100): {args.steps // 100} analyses; "
              f"median of {args.repeats} interleaved rounds")
        for mode in ("none", "foreground", "background"):
            totals = [r["total"] for r in runs[mode]]
            overhead = [t / b - 1 for t, b in zip(totals, base)]
            print(f"  {mode:10s} run {statistics.median(totals):6.2f} s (loop {statistics.median(r['loop'] for r in runs[mode]):6.2f} s, "
                  f"waited {statistics.median(r['waited'] for r in runs[mode]):.2f} s)"
                  + ("" if mode == "none" else f", overhead {statistics.median(overhead):+.1%} "
                     f"(rounds: {', '.join(f'{o:+.1%}' for o in overhead)})"))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "run"
        folder.mkdir()
        _train("checkpoints", 1800, 16, str(folder))
        count = len(list(folder.glob("*.safetensors")))
        times = []
        for label in ("fresh store", "store's results"):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "htmp_cli", "trajectory", str(folder), "--db", str(Path(scratch) / "s.sqlite"),
                            "--no-progress", "-f", "json", "-o", str(Path(scratch) / "t.json")], check=True)
            times.append((label, time.perf_counter() - started))
        ww = subprocess.run([sys.executable, "-c", _WW, str(folder)], capture_output=True, text=True, check=True)
        ww_seconds = json.loads(ww.stdout.strip().splitlines()[-1])["seconds"]
        print(f"htmp trajectory over {count} checkpoints: " + ", ".join(f"{label} {t:.2f} s" for label, t in times)
              + f"; WeightWatcher analyze() on each: {ww_seconds:.2f} s (ratio, fresh: {times[0][1] / ww_seconds:.2f})")


if __name__ == "__main__":
    main()
