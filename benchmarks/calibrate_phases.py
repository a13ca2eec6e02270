"""Confusion matrix of the phase classifier on fresh synthetic layers of every phase.

    python benchmarks/calibrate_phases.py [--per-phase 40] [--seed 1000]

Each layer is drawn by htmp_cli.synthetic.phase_layer at a random size (N 400-1600, M 100-N) and
analysed by the same code as `htmp analyze`; rows are the true phase, columns the label given.
"""

from __future__ import annotations

import argparse

import numpy as np

from htmp_cli.fits.phases import PHASE_LABELS, PHASES
from htmp_cli.options import AnalysisOptions
from htmp_cli.layers import spectrum_analysis
from htmp_cli.spectral import eigenvalues
from htmp_cli.synthetic import phase_layer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-phase", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    options = AnalysisOptions()
    counts = {p: {q: 0 for q in PHASE_LABELS} for p in PHASES}
    for phase in PHASES:
        for _ in range(args.per_phase):
            N = int(rng.integers(400, 1601))
            M = int(rng.integers(100, N + 1))
            W = phase_layer(phase, N, M, rng)
            analysis = spectrum_analysis(eigenvalues(W, backend="numpy"), options)
            counts[phase][analysis.phase.phase] += 1
    width = max(len(p) for p in PHASES)
    print(f"{'true / labelled':>{width}} | " + " | ".join(f"{p:>13}" for p in PHASE_LABELS) + " | correct")
    worst = 1.0
    for phase in PHASES:
        row = counts[phase]
        correct = row[phase] / args.per_phase
        worst = min(worst, correct)
        print(f"{phase:>{width}} | " + " | ".join(f"{row[q]:>13}" for q in PHASE_LABELS) + f" | {correct:.0%}")
    print(f"worst phase: {worst:.0%} correct ({args.per_phase} layers per phase, seed {args.seed})")


if __name__ == "__main__":
    main()
