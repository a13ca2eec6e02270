"""Eigenvalue engine: a weight matrix in, its sorted eigenvalue spectrum out.

The eigenvalues are the squared singular values of W, computed as the eigenvalues of the smaller
Gram matrix (W^T W or W W^T, M x M) with a symmetric solver: several times faster than an SVD.
The Gram matrix is accumulated over blocks of rows (or columns), each converted to the working
precision on its own, so memory holds the weights once, one block and the Gram matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec

import numpy as np

# Blocks of about 64 MB in the working precision keep the BLAS efficient and the copies small.
_BLOCK_BYTES = 64 * 2**20
# Below this Gram size the eigensolve takes milliseconds and importing torch would cost more.
TORCH_MIN_SIZE = 1024


class NonFiniteMatrixError(ValueError):
    """The matrix holds NaN or infinite entries; it has no spectrum."""


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of W^T W (ascending, float64, negative round-off clamped to zero)."""

    eigenvalues: np.ndarray
    N: int
    M: int
    precision: str
    backend: str
    zero_threshold: float  # below it an eigenvalue is a numerical zero: M * eps * lambda_max
    n_zero: int
    n_clamped: int  # negative eigenvalues (round-off) set to zero

    @property
    def nonzero(self) -> np.ndarray:
        values = self.eigenvalues
        return values[(values >= self.zero_threshold) & (values > 0)]

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[-1])


def choose_backend(requested: str, M: int) -> str:
    if requested != "auto":
        return requested
    if M >= TORCH_MIN_SIZE and find_spec("torch") is not None:
        return "torch"
    return "numpy"


def gram_matrix(W: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The M x M Gram matrix of the smaller side of W, accumulated block by block in `dtype`."""
    rows, cols = W.shape
    by_rows = rows >= cols  # W^T W: sum over blocks of rows; otherwise W W^T over blocks of columns
    M, N = (cols, rows) if by_rows else (rows, cols)
    step = max(1, _BLOCK_BYTES // (max(M, 1) * np.dtype(dtype).itemsize))
    gram = None
    for start in range(0, N, step):
        part = W[start : start + step] if by_rows else W[:, start : start + step]
        block = np.ascontiguousarray(part, dtype=dtype)
        if not np.isfinite(block).all():
            raise NonFiniteMatrixError("matrix contains NaN or Inf entries")
        # X^T X on one buffer lets BLAS use syrk (half the flops of a general product).
        product = block.T @ block if by_rows else block @ block.T
        if gram is None:
            gram = product
        else:
            gram += product
    assert gram is not None
    return gram


def eigenvalues(W: np.ndarray, precision: str = "float64", backend: str = "auto") -> Spectrum:
    """The spectrum of a 2-D weight matrix W; raises NonFiniteMatrixError on NaN or Inf."""
    if W.ndim != 2 or min(W.shape) == 0:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {W.shape}")
    dtype = np.dtype(np.float64 if precision == "float64" else np.float32)
    N, M = max(W.shape), min(W.shape)
    backend = choose_backend(backend, M)
    gram = gram_matrix(W, dtype)
    if backend == "torch":
        import torch

        values = torch.linalg.eigvalsh(torch.from_numpy(gram)).numpy()
    else:
        values = np.linalg.eigvalsh(gram)
    del gram
    values = np.sort(values.astype(np.float64))
    n_clamped = int(np.count_nonzero(values < 0))
    np.maximum(values, 0.0, out=values)
    lambda_max = float(values[-1])
    zero_threshold = M * float(np.finfo(dtype).eps) * lambda_max
    n_zero = int(np.count_nonzero(values < zero_threshold)) if lambda_max > 0 else M
    return Spectrum(
        eigenvalues=values,
        N=N,
        M=M,
        precision=precision,
        backend=backend,
        zero_threshold=zero_threshold,
        n_zero=n_zero,
        n_clamped=n_clamped,
    )
