"""Markdown table of phases and HTMP fits for checkpoints: python benchmarks/phase_report.py PATH..."""

from __future__ import annotations

import json
import subprocess
import sys


def main(paths: list[str]) -> None:
    for path in paths:
        out = subprocess.run([sys.executable, "-m", "htmp_cli", "analyze", path, "-f", "json"],
                             capture_output=True, text=True, check=True).stdout
        report = json.loads(out)
        print(f"\n`{path}`: " + ", ".join(f"{k} {v}" for k, v in report["summary"]["phase_counts"].items() if v))
        print("\n| layer | shape | alpha | kappa direct | kappa inverse | KS HTMP (best) | KS MP | phase |")
        print("|---|---|---|---|---|---|---|---|")
        for layer in report["layers"]:
            h = layer["htmp"]
            best = h[h["best"]] if h["best"] else {}
            alpha = layer["power_law"]["alpha"]
            print(f"| {layer['name']} | {'x'.join(map(str, layer['shape']))} | {alpha:.2f} | "
                  f"{h['direct']['kappa']:.3g}{' (bound)' if h['direct']['at_bound'] else ''} | "
                  f"{h['inverse']['kappa']:.3g} | {best.get('ks_htmp', float('nan')):.3f} ({h['best']}) | "
                  f"{layer['mp']['ks_all']:.3f} | {layer['phase']['summary']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
