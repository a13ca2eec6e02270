"""What the digits zoo says about the metrics: rank correlations with test accuracy, overall and per series.

    python benchmarks/zoo_study.py          (makes the zoo with fixtures/make_zoo.py if it is missing)

Runs `htmp scan` over benchmarks/_data/zoo with its labels, exports one row per checkpoint, and
prints Markdown tables: every network with its settings and metrics, then Spearman's rho (and
Kendall's tau) of each summary metric with test accuracy over the whole zoo and within each series
(the learning-rate x batch grid, the training-length series, the label-noise series).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_scan import ensure_digits_zoo

from htmp_cli.scan.labels import correlations

METRICS = ("alpha", "alpha_weighted", "log_alpha_norm", "log_norm", "log_spectral_norm", "stable_rank", "kappa", "mp_softrank", "D")


def series(entry: dict) -> str:
    if entry["label_noise"] > 0:
        return "label noise"
    if entry["epochs"] != 60:
        return "training length"
    return "lr x batch grid"


def main() -> None:
    zoo = ensure_digits_zoo()
    entries = {e["checkpoint"]: e for e in json.loads((zoo / "zoo.json").read_text())}
    with tempfile.TemporaryDirectory() as scratch:
        export = Path(scratch) / "zoo.csv"
        subprocess.run([sys.executable, "-m", "htmp_cli", "scan", str(zoo), "--db", str(Path(scratch) / "s.sqlite"),
                        "--labels", str(zoo / "labels.csv"), "--export", str(export), "--no-progress"],
                       check=True, capture_output=True, env={**os.environ, "COLUMNS": "200"})
        with open(export, newline="") as handle:
            rows = list(csv.DictReader(handle))
    for row in rows:
        row.update(entries[Path(row["checkpoint"]).name])
    print("| net | lr | batch | epochs | noise | test acc | alpha | alpha_w | kappa | stable_rank | phases |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        phases = ", ".join(f"{k.removeprefix('phase_')} {r[k]}" for k in r if k.startswith("phase_") and r[k] not in ("", "0"))
        print(f"| {Path(r['checkpoint']).stem} | {r['learning_rate']} | {r['batch_size']} | {r['epochs']} | {r['label_noise']} "
              f"| {float(r['test_accuracy']):.3f} | {float(r['mean_alpha']):.2f} | {float(r['mean_alpha_weighted']):.2f} "
              f"| {float(r['mean_kappa']):.2f} | {float(r['mean_stable_rank']):.1f} | {phases} |")
    groups = {"whole zoo": rows}
    for r in rows:
        groups.setdefault(series(r), []).append(r)
    print()
    print("| metric | " + " | ".join(f"{name} (n={len(g)})" for name, g in groups.items()) + " |")
    print("|---|" + "---|" * len(groups))
    # htmp's own correlations (exact Spearman p-values up to 9 checkpoints), per group.
    found = {name: {c.metric: c for c in correlations([{m: float(r[f"mean_{m}"]) for m in METRICS} for r in group],
                                                        [{"acc": float(r["test_accuracy"])} for r in group], ("acc",))}
             for name, group in groups.items()}
    for metric in METRICS:
        cells = [f"{c.spearman_rho:+.2f} (p {c.spearman_p:.2g}; tau {c.kendall_tau:+.2f})"
                 for c in (found[name][metric] for name in groups)]
        print(f"| {metric} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
