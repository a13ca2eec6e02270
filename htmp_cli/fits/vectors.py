"""Eigenvector localisation against the random (Haar) baseline (math.md section 6).

For a unit vector v in R^n drawn uniformly from the sphere (the eigenvectors of a Gaussian Gram
matrix are), the squared components (v_1^2, ..., v_n^2) are Dirichlet(1/2, ..., 1/2). From that:

- the inverse participation ratio IPR = sum v_i^4 has mean 3 / (n + 2) and variance
  24 (n - 1) / ((n + 2)^2 (n + 4) (n + 6)) (from the Dirichlet moments E[x^4] = 3/(n(n+2)),
  E[x^8] = 105/(n(n+2)(n+4)(n+6)), E[x_i^4 x_j^4] = 9/(n(n+2)(n+4)(n+6)); so sd(n IPR) -> sqrt(24/n));
- the Porter-Thomas-centred localisation q_PT = (IPR - 3/(n+2)) / (1 - 3/(n+2)) is 0 on average and
  1 for a basis vector;
- the Shannon entropy S = -sum v_i^2 ln v_i^2 has mean psi(n/2 + 1) - psi(3/2).

A vector is called localised when its IPR lies above the Haar distribution's upper 1e-3 quantile at
its own n. The IPR's tail is far heavier than a normal one for small n (a z-score above 5 holds for
0.3% of Haar vectors at n = 16, 0.02% at n = 1024), so the quantile is taken from Haar vectors drawn
once per n with a fixed seed (`haar_ipr_quantile`), not from the moments: the same rule means the
same false-alarm rate at n = 16 and at n = 4096.

This is a per-layer proxy for what the HTMP paper calls eigenvector entropy, a property of the
ensemble (math.md section 6): the numbers here are localisation, said as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FALSE_ALARM = 1e-3  # the share of Haar vectors the localisation rule flags, at every n
_ABOVE = 50  # Haar draws expected above the quantile: 50 / FALSE_ALARM draws of n numbers (about
# 0.3 s at n = 256 and 5 s at n = 4096 here, once per n and process)
_SEED = 20251201


@dataclass(frozen=True)
class HaarMoments:
    """The Haar baseline at dimension n."""

    n: int
    ipr_mean: float
    ipr_sd: float
    entropy_mean: float


@dataclass(frozen=True)
class VectorStats:
    """Localisation of a set of unit eigenvectors of one dimension, against the Haar baseline."""

    count: int
    mean_entropy: float
    entropy_z: float  # (mean entropy - Haar mean) / (its Haar standard error); negative: less spread
    mean_ipr: float
    ipr_z: float  # (mean IPR - Haar mean) / (its Haar standard error); positive: more localised
    mean_q_pt: float
    n_localised: int  # vectors whose IPR is above the Haar 1 - FALSE_ALARM quantile at n


@dataclass(frozen=True)
class VectorEvidence:
    """A layer's eigenvectors (dimension n, the Gram's side), by part of the spectrum: the tail
    (eigenvalues at or above the power law's xmin; None when the tail fit failed), the spikes (above
    the MP spike threshold; None when there are none) and the bulk (the other eigenvalues above
    numerical zero, whose eigenvectors are arbitrary within the null space and are left out)."""

    n: int
    haar_entropy: float  # a Haar vector's mean entropy at n
    haar_ipr: float  # and its mean IPR, 3 / (n + 2)
    threshold: float  # the IPR above which a vector is called localised (Haar 1 - FALSE_ALARM quantile)
    tail: VectorStats | None
    spikes: VectorStats | None
    bulk: VectorStats | None
    n_zero_left_out: int = 0

    @property
    def tail_localised(self) -> int | None:
        return self.tail.n_localised if self.tail is not None else None

    @property
    def tail_entropy_z(self) -> float | None:
        return self.tail.entropy_z if self.tail is not None else None

    @property
    def n_localised(self) -> int:
        """Localised vectors anywhere above numerical zero (the bulk and the spikes)."""
        return sum(part.n_localised for part in (self.bulk, self.spikes) if part is not None)


def haar_moments(n: int) -> HaarMoments:
    from scipy.special import digamma

    if n < 2:
        raise ValueError(f"eigenvectors need n >= 2, got {n}")
    return HaarMoments(n=n, ipr_mean=3.0 / (n + 2),
                       ipr_sd=math.sqrt(24.0 * (n - 1) / ((n + 2) ** 2 * (n + 4) * (n + 6))),
                       entropy_mean=float(digamma(n / 2 + 1) - digamma(1.5)))


@lru_cache(maxsize=64)
def haar_ipr_quantile(n: int, false_alarm: float = FALSE_ALARM) -> float:
    """The IPR above which a share `false_alarm` of Haar unit vectors in R^n lie, from seeded draws
    (the same value on every run), drawn in blocks so that memory stays bounded."""
    samples = int(_ABOVE / false_alarm)
    rng = np.random.default_rng([_SEED, n])
    values = np.empty(samples)
    block = max(1, (1 << 22) // n)
    for start in range(0, samples, block):
        count = min(block, samples - start)
        draws = rng.standard_normal((count, n))
        squares = draws * draws
        squares /= squares.sum(axis=1, keepdims=True)
        values[start:start + count] = (squares * squares).sum(axis=1)
    return float(np.quantile(values, 1.0 - false_alarm))


def ipr(vectors: np.ndarray) -> np.ndarray:
    """The IPR of each column (unit vectors)."""
    squares = np.asarray(vectors, dtype=np.float64) ** 2
    return (squares * squares).sum(axis=0)


def entropy(vectors: np.ndarray) -> np.ndarray:
    """The Shannon entropy of each column's squared components (0 ln 0 = 0)."""
    squares = np.asarray(vectors, dtype=np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(squares > 0, squares * np.log(squares), 0.0)
    return -terms.sum(axis=0)


def vector_stats(vectors: np.ndarray) -> VectorStats:
    """Localisation of the columns of `vectors` (n x k, each a unit vector) against the Haar baseline."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"expected an n x k array of k >= 1 unit vectors, got shape {vectors.shape}")
    return stats_of(vectors.shape[0], ipr(vectors), entropy(vectors))


def stats_of(n: int, iprs: np.ndarray, entropies: np.ndarray) -> VectorStats:
    """`vector_stats` from each vector's IPR and entropy (k >= 1 vectors of dimension n)."""
    haar = haar_moments(n)
    count = int(iprs.size)
    entropy_sd = _haar_entropy_sd(n)
    q_pt = (iprs - haar.ipr_mean) / (1.0 - haar.ipr_mean)
    return VectorStats(count=count, mean_entropy=float(entropies.mean()),
                       entropy_z=float((entropies.mean() - haar.entropy_mean) / (entropy_sd / math.sqrt(count))),
                       mean_ipr=float(iprs.mean()),
                       ipr_z=float((iprs.mean() - haar.ipr_mean) / (haar.ipr_sd / math.sqrt(count))),
                       mean_q_pt=float(q_pt.mean()), n_localised=int((iprs > haar_ipr_quantile(n)).sum()))


def q_pt(iprs: np.ndarray, n: int) -> np.ndarray:
    """The Porter-Thomas-centred localisation of IPRs at dimension n (0 for Haar on average, 1 for a basis vector)."""
    base = 3.0 / (n + 2)
    return (np.asarray(iprs, dtype=np.float64) - base) / (1.0 - base)


def eigenvector_evidence(eigenvalues: np.ndarray, iprs: np.ndarray, entropies: np.ndarray, n: int, *,
                         xmin: float | None, spike_threshold: float | None, zero_threshold: float) -> VectorEvidence:
    """A layer's VectorEvidence from its eigenvalues and each one's eigenvector IPR and entropy."""
    nonzero = (eigenvalues >= zero_threshold) & (eigenvalues > 0)
    spike = nonzero & (eigenvalues > spike_threshold) if spike_threshold is not None else np.zeros_like(nonzero)

    def part(mask: np.ndarray) -> VectorStats | None:
        return stats_of(n, iprs[mask], entropies[mask]) if mask.any() else None

    haar = haar_moments(n)
    return VectorEvidence(n=n, haar_entropy=haar.entropy_mean, haar_ipr=haar.ipr_mean,
                          threshold=haar_ipr_quantile(n),
                          tail=part(nonzero & (eigenvalues >= xmin)) if xmin is not None else None,
                          spikes=part(spike), bulk=part(nonzero & ~spike),
                          n_zero_left_out=int((~nonzero).sum()))


def _haar_entropy_sd(n: int) -> float:
    """The standard deviation of a Haar vector's entropy, from the Dirichlet(1/2) moments of x ln x:
    E[x ln x] = (a/A)(psi(a+1) - psi(A+1)), E[(x ln x)^2] = a(a+1)/(A(A+1)) ((psi(a+2) - psi(A+2))^2 +
    psi'(a+2) - psi'(A+2)), E[x ln x y ln y] = a^2/(A(A+1)) ((psi(a+1) - psi(A+2))^2 - psi'(A+2)),
    with a = 1/2 and A = n/2."""
    from scipy.special import polygamma, psi

    a, total = 0.5, n / 2
    first = a / total * (psi(a + 1) - psi(total + 1))
    square = a * (a + 1) / (total * (total + 1)) * ((psi(a + 2) - psi(total + 2)) ** 2
                                                    + polygamma(1, a + 2) - polygamma(1, total + 2))
    cross = a * a / (total * (total + 1)) * ((psi(a + 1) - psi(total + 2)) ** 2 - polygamma(1, total + 2))
    variance = n * square + n * (n - 1) * cross - (n * first) ** 2
    return float(math.sqrt(max(variance, 0.0)))
