"""The eigenvalue engine and the scale metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from htmp_cli import spectral
from htmp_cli.fits.metrics import scale_metrics
from htmp_cli.spectral import NonFiniteMatrixError, eigenvalues


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 70), cols=st.integers(1, 70), seed=st.integers(0, 2**31))
def test_eigenvalues_are_squared_singular_values(rows: int, cols: int, seed: int) -> None:
    W = np.random.default_rng(seed).standard_normal((rows, cols))
    spectrum = eigenvalues(W, backend="numpy")
    expected = np.sort(np.linalg.svd(W, compute_uv=False) ** 2)
    assert spectrum.M == min(rows, cols) and spectrum.N == max(rows, cols)
    np.testing.assert_allclose(spectrum.eigenvalues, expected, rtol=1e-9, atol=1e-9 * expected.max())
    assert (spectrum.eigenvalues >= 0).all()


def test_blocked_gram_equals_one_shot(monkeypatch: pytest.MonkeyPatch) -> None:
    W = np.random.default_rng(0).standard_normal((300, 40)).astype(np.float32)
    whole = eigenvalues(W, backend="numpy").eigenvalues
    monkeypatch.setattr(spectral, "_BLOCK_BYTES", 40 * 8 * 7)  # 7 rows per block
    blocked = eigenvalues(W, backend="numpy").eigenvalues
    monkeypatch.setattr(spectral, "_BLOCK_BYTES", 300 * 8 * 3)  # wide: 3 columns per block
    wide = eigenvalues(W.T.copy(), backend="numpy").eigenvalues
    np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=1e-12 * whole.max())
    np.testing.assert_allclose(wide, whole, rtol=1e-12, atol=1e-12 * whole.max())


def test_float32_is_accurate_at_the_top_of_the_spectrum() -> None:
    W = np.random.default_rng(1).standard_normal((800, 300))
    exact = eigenvalues(W, precision="float64", backend="numpy").eigenvalues
    fast = eigenvalues(W, precision="float32", backend="numpy").eigenvalues
    top = slice(-100, None)
    np.testing.assert_allclose(fast[top], exact[top], rtol=1e-5)


def test_torch_backend_agrees_with_numpy() -> None:
    W = np.random.default_rng(2).standard_normal((200, 120))
    a = eigenvalues(W, backend="numpy").eigenvalues
    b = eigenvalues(W, backend="torch")
    assert b.backend == "torch"
    np.testing.assert_allclose(b.eigenvalues, a, rtol=1e-10, atol=1e-10 * a.max())


def test_non_finite_entries_are_refused() -> None:
    W = np.ones((20, 10))
    W[3, 4] = np.nan
    with pytest.raises(NonFiniteMatrixError):
        eigenvalues(W)
    W[3, 4] = np.inf
    with pytest.raises(NonFiniteMatrixError):
        eigenvalues(W)


def test_numerical_zeros_are_counted() -> None:
    rng = np.random.default_rng(3)
    W = rng.standard_normal((100, 5)) @ rng.standard_normal((5, 40))  # rank 5 of 40
    spectrum = eigenvalues(W)
    assert spectrum.n_zero == 35
    assert spectrum.nonzero.size == 5


def test_scale_metrics_match_their_definitions() -> None:
    rng = np.random.default_rng(4)
    W = rng.standard_normal((120, 50))
    spectrum = eigenvalues(W)
    lam = spectrum.eigenvalues
    m = scale_metrics(lam, spectrum.nonzero, spectrum.M, alpha=2.5)
    assert m.norm == pytest.approx(np.sum(W**2), rel=1e-10)
    assert m.log_norm == pytest.approx(math.log10(lam.sum()))
    assert m.spectral_norm == pytest.approx(np.linalg.norm(W, 2) ** 2, rel=1e-10)
    assert m.stable_rank == pytest.approx(lam.sum() / lam.max())
    assert m.alpha_weighted == pytest.approx(2.5 * math.log10(lam.max()))
    assert m.log_alpha_norm == pytest.approx(math.log10(np.sum(lam**2.5)))
    p = lam / lam.sum()
    assert m.entropy == pytest.approx(-(p * np.log(p)).sum() / math.log(lam.size))
    assert m.rank_loss == 0
    assert m.log_spread == pytest.approx(math.log(lam.mean()) - np.log(lam).mean())


def test_log_alpha_norm_does_not_overflow() -> None:
    lam = np.array([1e300, 1e299, 1.0])
    m = scale_metrics(lam, lam, 3, alpha=4.0)
    assert m.log_alpha_norm == pytest.approx(1200 + math.log10(1 + 1e-4), rel=1e-12)


@pytest.mark.parametrize("shape", [(1300, 1030), (1030, 1300)])
def test_in_place_syrk_path_for_large_matrices(monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int]) -> None:
    """From M = 1024 on the Gram matrix is accumulated in place by BLAS syrk, tall or wide, in blocks."""
    W = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    monkeypatch.setattr(spectral, "_BLOCK_BYTES", 1030 * 8 * 100)  # 100 rows or columns per block
    gram = spectral.gram_matrix(W, "float64")
    assert gram.uplo == "U" and gram.values.flags["F_CONTIGUOUS"]
    spectrum = spectral.spectrum_of(gram, backend="numpy")
    expected = np.sort(np.linalg.svd(W.astype(np.float64), compute_uv=False) ** 2)
    np.testing.assert_allclose(spectrum.eigenvalues, expected, rtol=1e-8, atol=1e-10 * expected.max())


def _blas_threads() -> list[int]:
    """Thread counts of numpy's own BLAS (the one numpy's products and eigvalsh call)."""
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info()
            if info["user_api"] == "blas" and "numpy" in Path(info["filepath"]).parent.name]


@pytest.mark.parametrize("idle", [True, False])
def test_small_spectra_use_one_blas_thread_and_leave_the_count_as_it_was(monkeypatch: pytest.MonkeyPatch,
                                                                         idle: bool) -> None:
    """Below LARGE_MATRIX_SIZE the eigensolve runs on one BLAS thread (a second one is slower where
    the cores are busy, and changes the last digits); a large Gram product may use them all only
    while a core is idle, with the same result to the last bit. Afterwards the count is as before."""
    before = _blas_threads()
    if not before:
        pytest.skip("numpy's BLAS is not one threadpoolctl finds in numpy's own folder")
    seen: dict[str, list[int]] = {}

    def recorded(name, fn):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            seen.setdefault(name, []).extend(_blas_threads())
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(np.linalg, "eigvalsh", recorded("eigvalsh", np.linalg.eigvalsh))
    monkeypatch.setattr(spectral, "_a_core_is_idle", lambda: idle)
    monkeypatch.setattr(spectral, "nullcontext", recorded("product", spectral.nullcontext))
    W = np.random.default_rng(6).standard_normal((3000, 300))
    spectrum = eigenvalues(W, backend="numpy")
    assert set(seen["eigvalsh"]) == {1}
    assert ("product" in seen) == (idle and max(before) > 1 and 3000 * 300**2 >= spectral._THREADED_PRODUCT)
    assert _blas_threads() == before
    one_thread = np.sort(np.linalg.svd(W, compute_uv=False) ** 2)
    np.testing.assert_allclose(spectrum.eigenvalues, one_thread, rtol=1e-10, atol=1e-12 * one_thread.max())
