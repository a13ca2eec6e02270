"""Confusion matrices of the phase classifier, in both views, on fresh synthetic layers of every phase.

    python benchmarks/calibrate_phases.py [--per-phase 40] [--seed 1000]

Two kinds of layers:
- matrices: each drawn by htmp_cli.synthetic.phase_layer at a random size (N 400-1600, M 100-N);
- HTMP spectra: Dumitriu-Edelman samples (htmp_cli.synthetic.htmp_sample) at the kappas of the HTMP
  paper's Figure 2, labelled as the paper labels them (kappa 5.5 bulk-decay, 1.9 heavy-tailed, 1e-3
  rank-collapse; Marchenko-Pastur, the spectrum of a Gaussian matrix, random-like), at aspect
  ratios 0.1, 0.3255 (the figure's), 0.5 and 1, M 200-1000.
Both are analysed by the same code as `htmp analyze`; rows are the true phase, columns the label
given, for the headline (power-law view) and the HTMP view.
"""

from __future__ import annotations

import argparse

import numpy as np

from htmp_cli.fits.phases import PHASE_LABELS, PHASES
from htmp_cli.layers import spectrum_analysis
from htmp_cli.options import AnalysisOptions
from htmp_cli.spectral import Spectrum, eigenvalues
from htmp_cli.synthetic import htmp_sample, phase_layer

HTMP_ANCHORS = {"random-like": None, "bulk-decay": 5.5, "heavy-tailed": 1.9, "rank-collapse": 1e-3}
GAMMAS = (0.1, 0.3255, 0.5, 1.0)


def spectrum_of_values(values: np.ndarray, N: int, M: int) -> Spectrum:
    """A Spectrum of given eigenvalues, with the numerical-zero rule of htmp_cli.spectral."""
    values = np.sort(np.maximum(values, 0.0))
    threshold = M * float(np.finfo(np.float64).eps) * float(values[-1])
    return Spectrum(eigenvalues=values, N=N, M=M, precision="float64", backend="numpy", zero_threshold=threshold,
                    n_zero=int((values < threshold).sum()), n_clamped=0)


def htmp_layer(phase: str, gamma: float, rng: np.random.Generator) -> Spectrum:
    M = int(rng.integers(200, 1001))
    N = int(round(M / gamma))
    kappa = HTMP_ANCHORS[phase]
    if kappa is None:
        W = rng.standard_normal((N, M))
        return spectrum_of_values(np.linalg.eigvalsh(W.T @ W), N, M)
    return spectrum_of_values(htmp_sample(M, kappa, gamma, rng) * N, N, M)


def confusion(title: str, layers: dict[str, list[Spectrum]], options: AnalysisOptions) -> float:
    counts = {view: {p: {q: 0 for q in PHASE_LABELS} for p in layers} for view in ("headline", "htmp")}
    for phase, spectra in layers.items():
        for spectrum in spectra:
            result = spectrum_analysis(spectrum, options).phase
            counts["headline"][phase][result.phase] += 1
            counts["htmp"][phase][result.htmp_phase or "unclassified"] += 1
    worst = 1.0
    width = max(len(p) for p in PHASES)
    for view, table in counts.items():
        print(f"\n{title}, {'headline (power-law view)' if view == 'headline' else 'HTMP view'}")
        print(f"{'true / labelled':>{width}} | " + " | ".join(f"{p:>13}" for p in PHASE_LABELS) + " | correct")
        for phase, row in table.items():
            correct = row[phase] / max(sum(row.values()), 1)
            if view == "htmp" or title.startswith("matrices"):
                worst = min(worst, correct)
            print(f"{phase:>{width}} | " + " | ".join(f"{row[q]:>13}" for q in PHASE_LABELS) + f" | {correct:.0%}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-phase", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--alternatives", action="store_true",
                        help="with the likelihood-ratio tests, which turn an exponential tail's heavy-tailed into bulk-decay")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    options = AnalysisOptions(alternatives=args.alternatives)
    matrices: dict[str, list[Spectrum]] = {phase: [] for phase in PHASES}
    for phase in PHASES:
        for _ in range(args.per_phase):
            N = int(rng.integers(400, 1601))
            M = int(rng.integers(100, N + 1))
            matrices[phase].append(eigenvalues(phase_layer(phase, N, M, rng), backend="numpy"))
    worst = confusion(f"matrices ({args.per_phase} per phase)", matrices, options)
    spectra = {phase: [htmp_layer(phase, gamma, rng) for gamma in GAMMAS for _ in range(max(1, args.per_phase // 4))]
               for phase in HTMP_ANCHORS}
    worst = min(worst, confusion(f"HTMP spectra ({len(GAMMAS) * max(1, args.per_phase // 4)} per phase)", spectra,
                                 options))
    print(f"\nworst phase (both views on the matrices, the HTMP view on the HTMP spectra): {worst:.0%} correct "
          f"(seed {args.seed})")


if __name__ == "__main__":
    main()
