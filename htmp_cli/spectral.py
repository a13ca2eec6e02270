"""Eigenvalue engine: a weight matrix in, its sorted eigenvalue spectrum out.

The eigenvalues are the squared singular values of W, computed as the eigenvalues of the smaller
Gram matrix (W^T W or W W^T, M x M) with a symmetric solver: several times faster than an SVD.
The Gram matrix is accumulated over blocks of rows (or columns), each decoded and converted to
the working precision on its own, so memory holds the stored weights once, one block and the Gram
matrix; for large matrices BLAS syrk accumulates in place, so no second M x M product exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from typing import Callable

import numpy as np

# Blocks of about 64 MB in the working precision keep the BLAS efficient and the copies small.
_BLOCK_BYTES = 64 * 2**20
# From this Gram size on, the eigensolve takes long enough that importing torch (whose LAPACK is
# faster here) and scipy's BLAS (in-place syrk) pays for itself; below it numpy alone is quicker.
LARGE_MATRIX_SIZE = 1024

Decoder = Callable[[np.ndarray], np.ndarray]


class NonFiniteMatrixError(ValueError):
    """The matrix holds NaN or infinite entries; it has no spectrum."""


@dataclass(frozen=True)
class GramMatrix:
    """The M x M Gram matrix; only the `uplo` triangle ("U" or "L") is guaranteed to be filled."""

    values: np.ndarray
    uplo: str
    N: int
    M: int
    precision: str


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
    slices: int = 1  # matrices whose eigenvalues are pooled here (conv kernel positions)

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
    if M >= LARGE_MATRIX_SIZE and find_spec("torch") is not None:
        return "torch"
    return "numpy"


def _dtype(precision: str) -> np.dtype:
    return np.dtype(np.float64 if precision == "float64" else np.float32)


def gram_matrix(W: np.ndarray, precision: str = "float64", decode: Decoder | None = None) -> GramMatrix:
    """Gram matrix of the smaller side of W (stored values, turned into floats by `decode` if given)."""
    if W.ndim != 2 or min(W.shape) == 0:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {W.shape}")
    dtype = _dtype(precision)
    rows, cols = W.shape
    by_rows = rows >= cols  # W^T W: sum over blocks of rows; otherwise W W^T over blocks of columns
    M, N = (cols, rows) if by_rows else (rows, cols)
    step = max(1, _BLOCK_BYTES // (M * dtype.itemsize))
    in_place = M >= LARGE_MATRIX_SIZE
    if in_place:
        from scipy.linalg import blas

        syrk = blas.dsyrk if dtype == np.float64 else blas.ssyrk
        gram = np.zeros((M, M), dtype=dtype, order="F")
    else:
        gram = None
    for start in range(0, N, step):
        part = W[start : start + step] if by_rows else W[:, start : start + step]
        if decode is not None:
            part = decode(part)
        # (k, M) for a tall W, (M, k) for a wide one, in C order and never transposed in memory:
        # block.T is then Fortran-ordered, which syrk reads directly (trans picks the side).
        block = np.ascontiguousarray(part, dtype=dtype)
        if not np.isfinite(block).all():
            raise NonFiniteMatrixError("matrix contains NaN or Inf entries")
        if in_place:
            gram = syrk(1.0, block.T, beta=1.0, c=gram, trans=0 if by_rows else 1, lower=0, overwrite_c=1)
        else:
            # One buffer and its transpose: numpy calls syrk.
            product = block.T @ block if by_rows else block @ block.T
            if gram is None:
                gram = product
            else:
                gram += product
    return GramMatrix(values=gram, uplo="U" if in_place else "L", N=N, M=M, precision=precision)


def spectrum_of(gram: GramMatrix, backend: str = "auto") -> Spectrum:
    """Eigenvalues of a Gram matrix with a symmetric solver."""
    backend = choose_backend(backend, gram.M)
    if backend == "torch":
        import torch

        values = torch.linalg.eigvalsh(torch.from_numpy(gram.values), UPLO=gram.uplo).numpy()
    else:
        values = np.linalg.eigvalsh(gram.values, UPLO=gram.uplo)
    values = np.sort(values.astype(np.float64))
    n_clamped = int(np.count_nonzero(values < 0))
    np.maximum(values, 0.0, out=values)
    lambda_max = float(values[-1])
    zero_threshold = gram.M * float(np.finfo(_dtype(gram.precision)).eps) * lambda_max
    n_zero = int(np.count_nonzero(values < zero_threshold)) if lambda_max > 0 else gram.M
    return Spectrum(
        eigenvalues=values,
        N=gram.N,
        M=gram.M,
        precision=gram.precision,
        backend=backend,
        zero_threshold=zero_threshold,
        n_zero=n_zero,
        n_clamped=n_clamped,
    )


def pool_spectra(spectra: list[Spectrum]) -> Spectrum:
    """One spectrum holding the eigenvalues of several matrices of one shape (a conv kernel's slices).

    Numerical zeros are judged against the largest eigenvalue of all of them, as for one matrix.
    """
    first = spectra[0]
    values = np.sort(np.concatenate([s.eigenvalues for s in spectra]))
    lambda_max = float(values[-1])
    zero_threshold = first.M * float(np.finfo(_dtype(first.precision)).eps) * lambda_max
    n_zero = int(np.count_nonzero(values < zero_threshold)) if lambda_max > 0 else values.size
    return Spectrum(eigenvalues=values, N=first.N, M=first.M, precision=first.precision, backend=first.backend,
                    zero_threshold=zero_threshold, n_zero=n_zero, n_clamped=sum(s.n_clamped for s in spectra),
                    slices=len(spectra))


def eigenvalues(W: np.ndarray, precision: str = "float64", backend: str = "auto",
                decode: Decoder | None = None) -> Spectrum:
    """The spectrum of a 2-D weight matrix W; raises NonFiniteMatrixError on NaN or Inf."""
    return spectrum_of(gram_matrix(W, precision, decode), backend)
