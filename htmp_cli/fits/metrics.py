"""Scale metrics of a spectrum (WeightWatcher's definitions, on raw eigenvalues; math.md section 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN10 = math.log(10.0)


@dataclass(frozen=True)
class ScaleMetrics:
    norm: float  # sum of eigenvalues: the squared Frobenius norm
    log_norm: float
    spectral_norm: float  # lambda_max
    log_spectral_norm: float
    stable_rank: float
    entropy: float | None  # normalised spectral entropy; None when fewer than 2 non-zero eigenvalues
    rank_loss: int
    log_spread: float  # ln(arithmetic mean / geometric mean) of the non-zero eigenvalues
    alpha_weighted: float | None  # alpha * log10(lambda_max); None without a tail fit
    log_alpha_norm: float | None  # log10 sum lambda^alpha; None without a tail fit


def scale_metrics(eigenvalues: np.ndarray, nonzero: np.ndarray, M: int, alpha: float | None) -> ScaleMetrics:
    """Metrics of a spectrum with lambda_max > 0. `nonzero` holds the eigenvalues above numerical zero."""
    lambda_max = float(eigenvalues.max())
    norm = float(eigenvalues.sum())
    rank = nonzero.size
    log_nonzero = np.log(nonzero)
    if rank >= 2:
        p = nonzero / nonzero.sum()
        entropy = float(-(p * np.log(p)).sum() / math.log(rank))
    else:
        entropy = None
    log_spread = float(math.log(nonzero.mean()) - log_nonzero.mean())
    if alpha is not None:
        alpha_weighted = alpha * math.log10(lambda_max)
        # log10 sum exp(alpha ln lambda), shifted by the largest term so it cannot overflow.
        scaled = alpha * log_nonzero
        top = scaled.max()
        log_alpha_norm = float((top + math.log(np.exp(scaled - top).sum())) / LN10)
    else:
        alpha_weighted = log_alpha_norm = None
    return ScaleMetrics(
        norm=norm,
        log_norm=math.log10(norm),
        spectral_norm=lambda_max,
        log_spectral_norm=math.log10(lambda_max),
        stable_rank=norm / lambda_max,
        entropy=entropy,
        rank_loss=M - rank,
        log_spread=max(log_spread, 0.0),
        alpha_weighted=alpha_weighted,
        log_alpha_norm=log_alpha_norm,
    )
