"""The randomization null (math.md section 6a): what a layer's spectrum looks like once W's entries
are shuffled.

A seeded permutation of all of W's entries keeps their distribution and loses every learned
correlation between them. So, compared with W's own spectrum:

- a tail that survives the shuffle comes from heavy-tailed entries, not from learned structure;
- eigenvalues of the shuffled matrix beyond its own Marchenko-Pastur edge plus the 99.9% Tracy-Widom
  margin (htmp_cli.fits.mp) are its "correlation traps" (WeightWatcher 0.8's name): large entries
  that line up by chance, which a shuffled Gaussian matrix does not have. The margin is the 99.9%
  quantile, not the spikes' 99%: a trap is a claim about one layer, and a model of a hundred layers
  would show one by chance at 1% (2 of 100 Gaussian matrices did, measured).

The distance between the two ESDs is the two-sample Kolmogorov-Smirnov statistic of the eigenvalues.
Shuffling keeps the Frobenius norm, so both spectra have the same mean: normalising them by it
(math.md's "KS on the normalised spectra") changes nothing.

A tail "survives" (our rule) when the shuffled matrix has at least TAIL_SURVIVES as many traps as W
has spikes (eigenvalues past its own MP spike threshold): a low-rank signal plus noise drops to the
MP bulk when shuffled and keeps none; Student-t entries keep about as many as they had. (Counting
shuffled eigenvalues above W's xmin does not work: W's xmin often lies inside the shuffled bulk,
whose edge moves up as W's spectrum is pulled in by the shuffle at equal trace.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from htmp_cli.fits.mp import TW_999, MPFit
from htmp_cli.fits.powerlaw import PowerLawFit

TAIL_SURVIVES = 0.5  # traps of the shuffled matrix per spike of W for its tail to survive


@dataclass(frozen=True)
class RandomizationResult:
    """A layer against its shuffled self (one seeded permutation of W's entries)."""

    seed: int  # the analysis seed; the layer's permutation is drawn from it and the layer's name
    ks_distance: float  # two-sample KS statistic between W's and the shuffled W's eigenvalues
    lambda_max: float  # the shuffled spectrum's largest eigenvalue
    lambda_max_ratio: float  # ... over W's
    n_traps: int | None  # shuffled eigenvalues above trap_threshold (None: the shuffled MP fit failed)
    trap_threshold: float | None  # the shuffled MP fit's l+ + TW_999 s_TW
    alpha: float | None  # the power law fitted to the shuffled spectrum's tail (None: the fit failed)
    spikes_kept: float | None  # n_traps over W's spikes (None when W has none, or either MP fit failed)
    tail_survives: bool | None  # spikes_kept >= TAIL_SURVIVES


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    """sup_x |F_a(x) - F_b(x)| of two samples' empirical CDFs."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    points = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, points, side="right") / a.size
                               - np.searchsorted(b, points, side="right") / b.size)))


def randomization_result(original: np.ndarray, shuffled: np.ndarray, seed: int, mp: MPFit,
                         shuffled_fit: PowerLawFit, shuffled_mp: MPFit) -> RandomizationResult:
    """Compare W's eigenvalues with the shuffled W's, given W's MP fit and the shuffled one's fits."""
    lambda_max = float(np.max(shuffled))
    traps = threshold = kept = survives = None
    if shuffled_mp.status == "success" and shuffled_mp.lambda_plus is not None and shuffled_mp.tw_scale is not None:
        threshold = shuffled_mp.lambda_plus + TW_999 * shuffled_mp.tw_scale
        traps = int(np.count_nonzero(shuffled > threshold))
        if mp.status == "success" and mp.n_spikes:
            kept = traps / mp.n_spikes
            survives = kept >= TAIL_SURVIVES
    top = float(np.max(original))
    return RandomizationResult(seed=seed, ks_distance=ks_two_sample(original, shuffled), lambda_max=lambda_max,
                               lambda_max_ratio=lambda_max / top if top > 0 else float("nan"),
                               n_traps=traps, trap_threshold=threshold,
                               alpha=shuffled_fit.alpha if shuffled_fit.ok else None,
                               spikes_kept=kept, tail_survives=survives)
