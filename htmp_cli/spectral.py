"""Eigenvalue engine: a weight matrix in, its sorted eigenvalue spectrum out.

The eigenvalues are the squared singular values of W, computed as the eigenvalues of the smaller
Gram matrix (W^T W or W W^T, M x M) with a symmetric solver: several times faster than an SVD.
The Gram matrix is accumulated over blocks of rows (or columns), each decoded and converted to
the working precision on its own, so memory holds the stored weights once, one block and the Gram
matrix; for large matrices BLAS syrk accumulates in place, so no second M x M product exists.
With a torch device (a CUDA GPU, or the CPU) the same blocks are sent to it and both the product
and the eigensolve run there.
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from typing import Any, Callable, Iterator

import numpy as np

# Blocks of about 64 MB in the working precision keep the BLAS efficient and the copies small.
_BLOCK_BYTES = 64 * 2**20
# From this Gram size on, the eigensolve takes long enough that importing torch (whose LAPACK is
# faster here) and scipy's BLAS (in-place syrk) pays for itself; below it numpy alone is quicker.
LARGE_MATRIX_SIZE = 1024
# Multiply-adds of one block's Gram product from which BLAS may use all its threads (below
# LARGE_MATRIX_SIZE), when a core is idle: about 15 ms on one core. Two threads take 0.55 to 0.7
# of one thread's time at any size, but OpenBLAS's helper spins on its core for a while after
# every call: from 2^25 on, MiniLM-L6 took 4.5 s of CPU for 2.69 s of wall time, from 2^28 on
# 3.3 s for 2.73 s.
_THREADED_PRODUCT = 2**28

Decoder = Callable[[np.ndarray], np.ndarray]


class NonFiniteMatrixError(ValueError):
    """The matrix holds NaN or infinite entries; it has no spectrum."""


@dataclass(frozen=True)
class GramMatrix:
    """The M x M Gram matrix of (scale * W); only the `uplo` triangle ("U" or "L") is guaranteed to
    be filled. `values` is a numpy array, or a torch tensor on the device that computed it."""

    values: Any
    uplo: str
    N: int
    M: int
    precision: str
    amax: float = 0.0  # largest magnitude of W's entries
    scale: float = 1.0  # W was multiplied by this before the product (1 unless its range demanded it)


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
    # With eigenvectors asked for: each eigenvalue's eigenvector's inverse participation ratio and
    # entropy (htmp_cli.fits.vectors), in the eigenvalues' order. The vectors themselves (M x M) are
    # reduced to these where they were computed and never leave the solve.
    vector_ipr: np.ndarray | None = field(default=None, repr=False)
    vector_entropy: np.ndarray | None = field(default=None, repr=False)

    @property
    def nonzero(self) -> np.ndarray:
        values = self.eigenvalues
        return values[(values >= self.zero_threshold) & (values > 0)]

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[-1])


@lru_cache(maxsize=1)
def _blas_threads() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread() -> AbstractContextManager[Any]:
    """BLAS limited to one thread for as long as the context lasts, then as it was.

    Below LARGE_MATRIX_SIZE a second thread buys little (a 384 x 384 eigensolve: 11 ms with one,
    9 ms with two on an idle 2-core machine), and where the cores are busy it costs a great deal:
    each of the many small calls inside waits for a helper thread to be scheduled. MiniLM-L6's 39
    spectra took 2.5 s of eigensolves with two OpenBLAS threads on a loaded 2-core machine and
    0.45 s with one (2026-12-01). The thread count also changes eigvalsh's last digits (3e-15
    relative), so one thread keeps small spectra the same on every machine.

    The limit is process-wide (OpenBLAS has one thread count), so only the main thread sets it:
    an analysis in another thread (a training monitor's, a caller's) must not change the threads
    of the code running beside it, and runs with BLAS as the process has it.
    """
    if threading.current_thread() is not threading.main_thread():
        return nullcontext()
    return _blas_threads().limit(limits=1, user_api="blas")


def _product_threads(rows: int, M: int) -> AbstractContextManager[Any]:
    """BLAS threads for one block's Gram product below LARGE_MATRIX_SIZE: all of them for a large
    product while a core is idle, one otherwise (see one_blas_thread). The product is the same
    to the last bit either way (OpenBLAS splits the output, not the sums); only its time differs.
    Measured on 2 cores: 13107 x 640 took 0.19 s with two threads and 0.33 s with one when idle,
    and 0.60 s with two against 0.21 s with one (21845 x 384) when other processes kept both busy.
    """
    if rows * M * M >= _THREADED_PRODUCT and _a_core_is_idle():
        return nullcontext()
    return one_blas_thread()


def _a_core_is_idle() -> bool:
    """Whether the last minute's load leaves a core to spare beside this process."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows): as if idle
        return cores > 1
    return load < cores - 0.5


def choose_backend(requested: str, M: int) -> str:
    if requested != "auto":
        return requested
    if M >= LARGE_MATRIX_SIZE and find_spec("torch") is not None:
        return "torch"
    return "numpy"


def _dtype(precision: str) -> np.dtype:
    return np.dtype(np.float64 if precision == "float64" else np.float32)


def _needs_rescaling(amax: float, N: int, dtype: np.dtype) -> bool:
    """Whether squaring entries up to `amax` leaves the normal range of `dtype`.

    Products below tiny / eps lose digits to underflow (1e-30 or denormal weights in float32); a
    Gram entry sums N products, so above max / (4 N) it may overflow (1e30 weights in float32).
    """
    if amax == 0.0:
        return False
    info = np.finfo(dtype)
    square = amax * amax
    return not (float(info.tiny) / float(info.eps) <= square <= float(info.max) / (4.0 * N))


def torch_device(name: str):  # type: ignore[no-untyped-def]
    """The torch device of a device name (one place, so tests can route 'cuda' to the CPU)."""
    import torch

    return torch.device(name)


def gram_matrix(W: np.ndarray, precision: str = "float64", decode: Decoder | None = None,
                device: str | None = None) -> GramMatrix:
    """Gram matrix of the smaller side of W (stored values, turned into floats by `decode` if given).

    `device` ("cpu", "cuda") computes it with torch on that device; None with numpy and scipy's BLAS.
    Weights whose squares leave the working precision's range (tiny or huge scales) are scaled by
    a power of two near 1 / max|W| first; the spectrum is scaled back, in float64, by `spectrum_of`.
    """
    if W.ndim != 2 or min(W.shape) == 0:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {W.shape}")
    try:
        # Out-of-range products are caught by the range check below, not warned about.
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            gram = _accumulate(W, precision, decode, device, scale=1.0)
        amax = gram.amax
    except _OutOfRange as err:  # finite weights too large for the working precision
        gram, amax = None, err.amax
    if gram is None or _needs_rescaling(amax, gram.N, _dtype(precision)):
        # A power of two scales exactly: the spectrum is the one of W to the last bit, times 4^k.
        gram = _accumulate(W, precision, decode, device, scale=2.0 ** -math.frexp(amax)[1])
    return gram


class _OutOfRange(Exception):
    def __init__(self, amax: float) -> None:
        self.amax = amax


def _largest_magnitude(W: np.ndarray, decode: Decoder | None) -> float:
    values = W if decode is None else decode(W)
    return float(np.abs(np.asarray(values, dtype=np.float64)).max())


def _blocks(W: np.ndarray, precision: str, decode: Decoder | None, scale: float) -> Iterator[tuple[np.ndarray, float]]:
    """Row blocks of a tall W (column blocks of a wide one) in the working precision, with each
    block's largest magnitude before scaling; raises NonFiniteMatrixError at the first NaN or Inf."""
    if is_torch_tensor(W):  # a tensor where it lives (a GPU): never copied to the host
        yield from _torch_blocks(W, precision, scale)
        return
    dtype = _dtype(precision)
    rows, cols = W.shape
    by_rows = rows >= cols
    M, N = (cols, rows) if by_rows else (rows, cols)
    step = max(1, _BLOCK_BYTES // (M * dtype.itemsize))
    for start in range(0, N, step):
        part = W[start : start + step] if by_rows else W[:, start : start + step]
        if decode is not None:
            part = decode(part)
        # (k, M) for a tall W, (M, k) for a wide one, in C order and never transposed in memory.
        if scale != 1.0:
            block = np.asarray(part, dtype=np.float64) * scale  # scaled before narrowing: no underflow
            peak = float(np.abs(block).max()) / scale
            block = block.astype(dtype)
        else:
            with np.errstate(over="ignore"):
                block = np.ascontiguousarray(part, dtype=dtype)
            # No |block| temporary; a NaN anywhere makes the max NaN, an infinity makes it infinite.
            peak = max(float(block.max()), -float(block.min()))
        if not np.isfinite(peak):
            if np.isfinite(part).all():  # float64 weights beyond float32's range: not the matrix's fault
                raise _OutOfRange(_largest_magnitude(W, decode))
            raise NonFiniteMatrixError("matrix contains NaN or Inf entries")
        # Dropped before the next block is made: otherwise a decoded block, and the previous one,
        # would live on beside it (a third of the peak memory for bf16 and quantised weights).
        del part
        yield block, peak
        del block


def is_torch_tensor(value: object) -> bool:
    """Whether `value` is a torch tensor (told without importing torch)."""
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "device")


def _torch_blocks(W: Any, precision: str, scale: float) -> Iterator[tuple[Any, float]]:
    """`_blocks` of a torch tensor, computed by torch on the tensor's own device."""
    import torch

    dtype = torch.float64 if precision == "float64" else torch.float32
    rows, cols = W.shape
    by_rows = rows >= cols
    M, N = (cols, rows) if by_rows else (rows, cols)
    step = max(1, _BLOCK_BYTES // (M * (8 if precision == "float64" else 4)))
    for start in range(0, N, step):
        part = (W[start : start + step] if by_rows else W[:, start : start + step]).detach()
        if scale != 1.0:
            block = part.to(torch.float64) * scale
            peak = float(block.abs().max()) / scale
            block = block.to(dtype)
        else:
            block = part.to(dtype).contiguous()
            peak = max(float(block.max()), -float(block.min()))
        if not math.isfinite(peak):
            if bool(torch.isfinite(part).all()):
                raise _OutOfRange(float(W.detach().to(torch.float64).abs().max()))
            raise NonFiniteMatrixError("matrix contains NaN or Inf entries")
        del part
        yield block, peak
        del block


def _accumulate(W: np.ndarray, precision: str, decode: Decoder | None, device: str | None, scale: float) -> GramMatrix:
    dtype = _dtype(precision)
    rows, cols = W.shape
    by_rows = rows >= cols  # W^T W: sum over blocks of rows; otherwise W W^T over blocks of columns
    M, N = (cols, rows) if by_rows else (rows, cols)
    amax = 0.0
    if device is not None:
        import torch

        target = torch_device(device)
        gram = torch.zeros((M, M), dtype=torch.float64 if dtype == np.float64 else torch.float32, device=target)
        for block, peak in _blocks(W, precision, decode, scale):
            amax = max(amax, peak)
            part = (block if isinstance(block, torch.Tensor) else torch.from_numpy(block)).to(target)
            if by_rows:
                gram.addmm_(part.T, part)
            else:
                gram.addmm_(part, part.T)
            del block, part  # before the next block is decoded
        return GramMatrix(values=gram, uplo="L", N=N, M=M, precision=precision, amax=amax, scale=scale)
    in_place = M >= LARGE_MATRIX_SIZE
    if in_place:
        from scipy.linalg import blas

        syrk = blas.dsyrk if dtype == np.float64 else blas.ssyrk
        gram = np.zeros((M, M), dtype=dtype, order="F")
    else:
        gram = None
    for block, peak in _blocks(W, precision, decode, scale):
        amax = max(amax, peak)
        if in_place:
            # block.T is Fortran-ordered, which syrk reads directly (trans picks the side).
            gram = syrk(1.0, block.T, beta=1.0, c=gram, trans=0 if by_rows else 1, lower=0, overwrite_c=1)
        else:
            # One buffer and its transpose: numpy calls syrk.
            with _product_threads(block.shape[0] if by_rows else block.shape[1], M):
                product = block.T @ block if by_rows else block @ block.T
            if gram is None:
                gram = product
            else:
                gram += product
        del block  # before the next block is decoded
    return GramMatrix(values=gram, uplo="U" if in_place else "L", N=N, M=M, precision=precision, amax=amax,
                      scale=scale)


def spectrum_of(gram: GramMatrix, backend: str = "auto", vectors: bool = False) -> Spectrum:
    """Eigenvalues of a Gram matrix with a symmetric solver (torch's on the Gram's device if it is a
    torch tensor); raises NonFiniteMatrixError if they overflow float64 once scaled back.

    `vectors` solves for the eigenvectors too (syevd: about 2-3 times the eigenvalues alone) and
    keeps each one's localisation (`Spectrum.vector_ipr`, `vector_entropy`), computed on the
    Gram's device in float64."""
    ipr = entropy = None
    if not isinstance(gram.values, np.ndarray):
        import torch

        backend = f"torch-{gram.values.device.type}"
        if vectors:
            solved, basis = torch.linalg.eigh(gram.values, UPLO=gram.uplo)
            values = solved.cpu().numpy()
            ipr, entropy = (part.cpu().numpy() for part in _torch_localisation(basis))
            del basis
        else:
            values = torch.linalg.eigvalsh(gram.values, UPLO=gram.uplo).cpu().numpy()
    else:
        backend = choose_backend(backend, gram.M)
        if backend == "torch":
            import torch

            if vectors:
                solved, basis = torch.linalg.eigh(torch.from_numpy(gram.values), UPLO=gram.uplo)
                values = solved.numpy()
                ipr, entropy = (part.numpy() for part in _torch_localisation(basis))
                del basis
            else:
                values = torch.linalg.eigvalsh(torch.from_numpy(gram.values), UPLO=gram.uplo).numpy()
        else:
            with one_blas_thread() if gram.M < LARGE_MATRIX_SIZE else nullcontext():
                if vectors:
                    values, basis = np.linalg.eigh(gram.values, UPLO=gram.uplo)
                    ipr, entropy = _localisation(basis)
                    del basis
                else:
                    values = np.linalg.eigvalsh(gram.values, UPLO=gram.uplo)
    values = values.astype(np.float64)
    order = np.argsort(values, kind="stable")
    values = values[order]
    if ipr is not None and entropy is not None:
        ipr, entropy = ipr[order], entropy[order]
    if gram.scale != 1.0:
        with np.errstate(over="ignore"):
            values = np.ldexp(values, -2 * math.frexp(gram.scale)[1] + 2)  # exact: scale is 2^(1-e)
    if not np.isfinite(values).all():
        raise NonFiniteMatrixError(f"eigenvalues overflow float64 (entries up to {gram.amax:.3g})")
    n_clamped = int(np.count_nonzero(values < 0))
    np.maximum(values, 0.0, out=values)
    zero_threshold, n_zero = _numerical_zeros(values, gram.M, gram.precision)
    return Spectrum(
        eigenvalues=values,
        N=gram.N,
        M=gram.M,
        precision=gram.precision,
        backend=backend,
        zero_threshold=zero_threshold,
        n_zero=n_zero,
        n_clamped=n_clamped,
        vector_ipr=ipr,
        vector_entropy=entropy,
    )


def _numerical_zeros(values: np.ndarray, M: int, precision: str) -> tuple[float, int]:
    """The numerical-zero cut of sorted eigenvalues, M * eps * lambda_max, and how many lie below it
    (all of them when lambda_max is 0)."""
    lambda_max = float(values[-1])
    zero_threshold = M * float(np.finfo(_dtype(precision)).eps) * lambda_max
    return zero_threshold, int(np.count_nonzero(values < zero_threshold)) if lambda_max > 0 else values.size


def _localisation(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's IPR (sum v^4) and entropy (-sum v^2 ln v^2), in float64, a block of columns
    at a time so that no second M x M float64 array exists."""
    M = basis.shape[1]
    ipr, entropy = np.empty(M), np.empty(M)
    step = max(1, (16 * 2**20) // (8 * basis.shape[0]))
    for start in range(0, M, step):
        squares = np.square(basis[:, start:start + step], dtype=np.float64)
        ipr[start:start + step] = np.einsum("ij,ij->j", squares, squares)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(squares > 0, np.log(squares), 0.0)
        entropy[start:start + step] = -np.einsum("ij,ij->j", squares, logs)
    return ipr, entropy


def _torch_localisation(basis: Any) -> tuple[Any, Any]:
    """`_localisation` with torch, on the basis's device."""
    import torch

    squares = basis.to(torch.float64).square()
    ipr = squares.square().sum(dim=0)
    entropy = -torch.special.xlogy(squares, squares).sum(dim=0)
    return ipr, entropy


def pool_spectra(spectra: list[Spectrum]) -> Spectrum:
    """One spectrum holding the eigenvalues of several matrices of one shape (a conv kernel's slices).

    Numerical zeros are judged against the largest eigenvalue of all of them, as for one matrix.
    """
    first = spectra[0]
    values = np.concatenate([s.eigenvalues for s in spectra])
    order = np.argsort(values, kind="stable")
    values = values[order]
    ipr = entropy = None
    if all(s.vector_ipr is not None and s.vector_entropy is not None for s in spectra):
        ipr = np.concatenate([s.vector_ipr for s in spectra])[order]  # type: ignore[misc]
        entropy = np.concatenate([s.vector_entropy for s in spectra])[order]  # type: ignore[misc]
    zero_threshold, n_zero = _numerical_zeros(values, first.M, first.precision)
    return Spectrum(eigenvalues=values, N=first.N, M=first.M, precision=first.precision, backend=first.backend,
                    zero_threshold=zero_threshold, n_zero=n_zero, n_clamped=sum(s.n_clamped for s in spectra),
                    slices=len(spectra), vector_ipr=ipr, vector_entropy=entropy)


def low_rank_spectrum(B: np.ndarray, A: np.ndarray, scale: float, precision: str = "float64") -> Spectrum:
    """The spectrum of the (out, in) matrix scale * B A (B: out x r, A: r x in) from r x r work alone.

    With B = Q_B R_B and A^T = Q_A R_A, scale * B A = Q_B (scale * R_B R_A^T) Q_A^T, and the two
    outer factors have orthonormal columns: the singular values of the small core are those of the
    product. The other min(out, in) - r eigenvalues are exact zeros and are stored as such, so the
    spectrum has the size of the product's and its N and M. Always computed in float64 (it is cheap);
    `precision` sets the numerical-zero cut, as for a solved matrix.
    """
    if not (np.isfinite(B).all() and np.isfinite(A).all()):
        raise NonFiniteMatrixError("the update's factors hold NaN or infinite entries")
    rows, cols = B.shape[0], A.shape[1]
    N, M = max(rows, cols), min(rows, cols)
    _, r_b = np.linalg.qr(np.asarray(B, dtype=np.float64), mode="reduced")
    _, r_a = np.linalg.qr(np.asarray(A, dtype=np.float64).T, mode="reduced")
    with np.errstate(over="ignore", invalid="ignore"):
        core = scale * (r_b @ r_a.T)
        squared = np.square(np.linalg.svd(core, compute_uv=False)) if np.isfinite(core).all() else None
    if squared is None or not np.isfinite(squared).all():
        raise NonFiniteMatrixError("the update's eigenvalues overflow float64")
    values = np.zeros(M)  # the core is at most min(r, out, in) square: never more than M values
    values[M - squared.size:] = np.sort(squared)
    zero_threshold, n_zero = _numerical_zeros(values, M, precision)
    return Spectrum(eigenvalues=values, N=N, M=M, precision=precision, backend="numpy-low-rank",
                    zero_threshold=zero_threshold, n_zero=n_zero, n_clamped=0)


def shuffled_entries(W: Any, decode: Decoder | None, rng: np.random.Generator) -> Any:
    """W's entries in the order of one permutation drawn from `rng`, in W's shape: the same values
    (decoded to floats), none of their arrangement. A torch tensor is shuffled on its own device."""
    if is_torch_tensor(W):
        import torch

        flat = W.detach().reshape(-1)
        order = torch.from_numpy(rng.permutation(flat.numel())).to(flat.device)
        return flat[order].reshape(W.shape)
    values = np.asarray(W if decode is None else decode(W))
    return rng.permutation(values.reshape(-1)).reshape(values.shape)


def eigenvalues(W: np.ndarray, precision: str = "float64", backend: str = "auto",
                decode: Decoder | None = None, device: str | None = None, vectors: bool = False) -> Spectrum:
    """The spectrum of a 2-D weight matrix W; raises NonFiniteMatrixError on NaN or Inf."""
    return spectrum_of(gram_matrix(W, precision, decode, device), backend, vectors)


@dataclass(frozen=True)
class WindowSpectra:
    """The eigenvalues of square windows of one matrix, pooled (FARMS, math.md section 6c)."""

    eigenvalues: np.ndarray  # ascending
    window: int  # the windows' side
    grid: int  # windows per side of the regular grid asked for
    n_windows: int  # distinct windows solved (a side no longer than the window has one start)


def window_starts(length: int, window: int, grid: int) -> list[int]:
    """FARMS's window starts along one side: min(i * step, length - window) for i < grid, step =
    floor((length - window) / (grid - 1)); the distinct ones (a side equal to the window has one)."""
    step = (length - window) // (grid - 1) if grid > 1 else 0
    return sorted({min(i * step, length - window) for i in range(grid)})


def window_spectra(W: Any, decode: Decoder | None, window: int, grid: int, precision: str = "float64",
                   backend: str = "auto", device: str | None = None) -> WindowSpectra:
    """The pooled eigenvalues of W's window x window windows on a grid x grid regular grid. Each
    distinct window is solved once: the grid's windows are distinct along a side or all equal, so
    every distinct window stands for the same number of the grid's, and pooling them once gives the
    same ESD."""
    rows, cols = W.shape
    if window > min(rows, cols) or window < 1:
        raise ValueError(f"a {window} x {window} window does not fit a {rows} x {cols} matrix")
    pooled = [spectrum_of(gram_matrix(W[r:r + window, c:c + window], precision, decode, device), backend).eigenvalues
              for r in window_starts(rows, window, grid) for c in window_starts(cols, window, grid)]
    return WindowSpectra(eigenvalues=np.sort(np.concatenate(pooled)), window=window, grid=grid, n_windows=len(pooled))
