"""FARMS (Hu, Goel, Killiakov, Yang, ICML 2025; math.md section 6c): a layer's power law and HTMP
fitted on the pooled ESD of square windows of it, so that layers of different shapes compare.

The aspect ratio of a matrix shapes its ESD (MP's edges move with it), so the alphas of a square
layer and of a 1:4 one are not comparable. The windows are square (gamma = 1) and of one size: cut
on a regular grid, their eigenvalues pooled into one ESD, they give an alpha and a kappa that depend
on the weights' statistics rather than on the layer's shape, provided every layer is cut with the
same window. A window larger than a layer's smaller side is cut to it, and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from htmp_cli.fits.htmp import HTMPFit, better_fit, fit_htmp
from htmp_cli.fits.powerlaw import PowerLawFit, fit_power_law

DEFAULT_WINDOW = 2000  # the paper's LLM setting; vision models used 100
DEFAULT_GRID = 15  # 15 x 15 = 225 windows (vision: 9)


@dataclass(frozen=True)
class FarmsResult:
    window: int  # the windows' side, as used for this layer
    grid: int
    n_windows: int  # distinct windows pooled
    n_eigenvalues: int
    power_law: PowerLawFit
    htmp: HTMPFit | None  # gamma = 1, the orientation that fits better; None without --htmp
    window_cut: bool = False  # the window asked for was larger than this layer's smaller side

    @property
    def alpha(self) -> float | None:
        return self.power_law.alpha if self.power_law.ok else None

    @property
    def kappa(self) -> float | None:
        return self.htmp.kappa if self.htmp is not None and self.htmp.status == "success" else None


def farms_result(eigenvalues: np.ndarray, window: int, grid: int, n_windows: int, *, precision: str, min_tail: int,
                 htmp: bool, window_cut: bool) -> FarmsResult:
    """The fits of the pooled window eigenvalues; numerical zeros (below window * eps * lambda_max,
    as for one matrix) are left out."""
    values = np.asarray(eigenvalues, dtype=np.float64)
    eps = float(np.finfo(np.float64 if precision == "float64" else np.float32).eps)
    positive = values[(values > 0) & (values >= window * eps * float(values.max(initial=0.0)))]
    best = better_fit(fit_htmp(positive, 1.0, "direct"), fit_htmp(positive, 1.0, "inverse")) if htmp else None
    return FarmsResult(window=window, grid=grid, n_windows=n_windows, n_eigenvalues=int(values.size),
                       power_law=fit_power_law(positive, min_tail=min_tail), htmp=best, window_cut=window_cut)
