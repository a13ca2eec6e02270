"""Run WeightWatcher 0.7.7's analyze() on a checkpoint folder and write its per-layer fit as JSON.

    python benchmarks/ww_reference.py FOLDER OUT.json

Run as its own process: importing weightwatcher reconfigures the root logger and warning filters,
which must not leak into htmp or its tests. WeightWatcher takes a folder holding model.safetensors.
"""

from __future__ import annotations

import json
import sys
import time


def main(folder: str, out: str) -> None:
    started = time.perf_counter()
    import weightwatcher

    watcher = weightwatcher.WeightWatcher()
    frame = watcher.analyze(model=folder)
    layers = [
        {
            "name": row["name"],
            "N": int(row["N"]),
            "M": int(row["M"]),
            "alpha": float(row["alpha"]),
            "xmin": float(row["xmin"]),
            "D": float(row["D"]),
            "tail_size": int(row["num_pl_spikes"]),
            "status": str(row.get("status", "")),
        }
        for _, row in frame.iterrows()
    ]
    with open(out, "w") as handle:
        json.dump({"weightwatcher": weightwatcher.__version__, "seconds": time.perf_counter() - started,
                   "layers": layers}, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
