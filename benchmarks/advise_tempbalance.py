"""TempBalance (`htmp_cli.advise.param_groups` + `SpectralBalancer`) against one global learning rate.

    python benchmarks/advise_tempbalance.py [--seeds 5] [--epochs 30] [--lr 0.05]

The digits CNN of benchmarks/digits_cnn.py, trained per seed twice with the same data order,
initialisation, SGD (momentum 0.9, weight decay 5e-4) and cosine schedule: once with one rate,
once with TempBalance's per-layer rates (factors in [0.5, 1.5] of the scheduled rate, re-derived
from the spectra after every epoch, as the paper does). Prints test accuracy per seed and mean
+- sd (results in docs/advise.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from digits_cnn import train  # noqa: E402

from htmp_cli.advise import param_groups  # noqa: E402
from htmp_cli.integrations.balance import SpectralBalancer  # noqa: E402


def tempbalance_run(seed: int, epochs: int, lr: float) -> tuple[float, list[float]]:
    balancers: list[SpectralBalancer] = []
    spreads: list[float] = []

    def optimizer_for(model: torch.nn.Module, rate: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(param_groups(model, lr=rate), lr=rate, momentum=0.9, weight_decay=5e-4)

    def after_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: object) -> None:
        if not balancers:
            balancers.append(SpectralBalancer(model, optimizer, scheduler))
        advice = balancers[0].step()["lr"]
        factors = [layer.factor for layer in advice.layers if layer.status == "fitted"]
        spreads.append(max(factors) - min(factors) if factors else 0.0)

    _, accuracy = train(seed, epochs, lr, optimizer_for=optimizer_for, after_epoch=after_epoch)
    return accuracy, spreads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"global lr": [], "TempBalance": []}
    for seed in range(args.seeds):
        _, baseline = train(seed, args.epochs, args.lr)
        balanced, spreads = tempbalance_run(seed, args.epochs, args.lr)
        results["global lr"].append(baseline)
        results["TempBalance"].append(balanced)
        print(json.dumps({"seed": seed, "global_lr": baseline, "tempbalance": balanced,
                          "factor_spread_first_last": [spreads[0], spreads[-1]]}), flush=True)
    for label, values in results.items():
        array = np.array(values)
        print(f"{label:>12}: test accuracy {array.mean():.4f} +- {array.std(ddof=1) if array.size > 1 else 0:.4f} "
              f"over {array.size} seeds")
    difference = np.array(results["TempBalance"]) - np.array(results["global lr"])
    print(f"TempBalance - global, paired: {difference.mean():+.4f} +- {difference.std(ddof=1) if difference.size > 1 else 0:.4f}")


if __name__ == "__main__":
    main()
