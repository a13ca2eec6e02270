"""--device: the torch engine (Gram product and eigensolve on a torch device) and its CLI contract.

The GPU path is the torch engine on a CUDA device; here it runs on torch's CPU device, which every
machine has, and `--device cuda` is routed there by patching the one function that names devices.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch  # installed by `make install`; its absence must fail these tests, not skip them
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from conftest import run_htmp
from htmp_cli import device as device_module
from htmp_cli import spectral as spectral_module
from htmp_cli.errors import OptionError
from htmp_cli.loaders.dtypes import decode_bf16
from htmp_cli.options import AnalysisOptions
from htmp_cli.pipeline import analyze
from htmp_cli.spectral import NonFiniteMatrixError, eigenvalues



@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 90), cols=st.integers(1, 90), precision=st.sampled_from(["float64", "float32"]),
       seed=st.integers(0, 2**16))
def test_torch_engine_matches_numpy(rows: int, cols: int, precision: str, seed: int) -> None:
    W = np.random.default_rng(seed).standard_normal((rows, cols))
    reference = eigenvalues(W, precision, backend="numpy")
    on_torch = eigenvalues(W, precision, device="cpu")
    assert on_torch.backend == "torch-cpu"
    assert (on_torch.N, on_torch.M) == (reference.N, reference.M)
    tolerance = 1e-10 if precision == "float64" else 2e-5
    scale = reference.lambda_max
    np.testing.assert_allclose(on_torch.eigenvalues, reference.eigenvalues, rtol=0, atol=tolerance * scale)


def test_torch_engine_blocks_decode_and_wide_matrices(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """bf16 decoded block by block, tall and wide, across several blocks."""
    from htmp_cli import spectral

    monkeypatch.setattr(spectral, "_BLOCK_BYTES", 40 * 8 * 7)  # 7 rows of 40 float64 per block
    rng = np.random.default_rng(3)
    values = rng.standard_normal((95, 40)).astype(np.float32)
    stored = (values.view(np.uint32) >> 16).astype(np.uint16)
    decode = decode_bf16
    for W in (stored, stored.T):
        reference = eigenvalues(decode(W), "float64", backend="numpy")
        on_torch = eigenvalues(W, "float64", decode=decode, device="cpu")
        np.testing.assert_allclose(on_torch.eigenvalues, reference.eigenvalues, rtol=1e-12,
                                   atol=1e-12 * reference.lambda_max)


def test_torch_engine_refuses_nan_and_rescales_huge() -> None:
    W = np.random.default_rng(4).standard_normal((50, 30)).astype(np.float32)
    bad = W.copy()
    bad[1, 2] = np.nan
    with pytest.raises(NonFiniteMatrixError):
        eigenvalues(bad, "float32", device="cpu")
    base = eigenvalues(W, "float32", device="cpu").eigenvalues
    huge = eigenvalues(W * np.float32(2.0**100), "float32", device="cpu").eigenvalues
    np.testing.assert_array_equal(huge, np.ldexp(base, 200))


@pytest.fixture()
def small_checkpoint(tmp_path):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    tensors = {f"layer{i}.weight": (rng.standard_normal((160, 64 + 8 * i)) * (1 + rng.pareto(2.0, 64 + 8 * i)))
               .astype(np.float32) for i in range(3)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path


def test_device_cuda_runs_the_torch_engine_for_every_layer(monkeypatch, small_checkpoint) -> None:  # type: ignore[no-untyped-def]
    """--device cuda with the device routed to torch's CPU: every layer goes through the GPU code path
    and agrees with the CPU analysis."""
    monkeypatch.setattr(device_module, "cuda_status", lambda: None)
    monkeypatch.setattr(spectral_module, "torch_device", lambda name: torch.device("cpu"))
    on_device = analyze(small_checkpoint, AnalysisOptions(device="cuda"), jobs=1)
    on_cpu = analyze(small_checkpoint, AnalysisOptions(device="cpu"), jobs=1)
    assert [layer.backend for layer in on_device.layers] == ["torch-cpu"] * 3
    assert [layer.backend for layer in on_cpu.layers] == ["numpy"] * 3
    for a, b in zip(on_device.layers, on_cpu.layers):
        assert a.power_law.alpha == pytest.approx(b.power_law.alpha, rel=1e-8)
        assert a.phase.phase == b.phase.phase
        assert a.metrics.log_norm == pytest.approx(b.metrics.log_norm, rel=1e-12)


def test_device_auto_sends_only_large_matrices(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(device_module, "cuda_status", lambda: None)
    assert device_module.device_for("auto", "auto", 1024) == "cuda"
    assert device_module.device_for("auto", "auto", 1023) == "cpu"
    assert device_module.device_for("auto", "numpy", 4096) == "cpu"
    assert device_module.device_for("cpu", "auto", 4096) == "cpu"
    assert device_module.device_for("cuda", "auto", 8) == "cuda"
    monkeypatch.setattr(device_module, "cuda_status", lambda: "no GPU")
    assert device_module.device_for("auto", "auto", 4096) == "cpu"


def test_cuda_with_numpy_backend_is_a_usage_error() -> None:
    with pytest.raises(OptionError, match="--backend numpy"):
        AnalysisOptions(device="cuda", backend="numpy")


def test_cli_device_cuda_and_auto_on_this_machine(small_checkpoint) -> None:  # type: ignore[no-untyped-def]
    """Without a GPU: cuda exits 2 with one line, auto analyses on the CPU. With one: both use it."""
    device_module.cuda_status.cache_clear()
    gpu = device_module.cuda_status() is None
    cuda = run_htmp("analyze", str(small_checkpoint), "--device", "cuda", "-f", "json", "--no-progress")
    auto = run_htmp("analyze", str(small_checkpoint), "--device", "auto", "-f", "json", "--no-progress")
    assert auto.returncode == 0, auto.stderr
    if gpu:
        assert cuda.returncode == 0, cuda.stderr
        assert {layer["backend"] for layer in json.loads(cuda.stdout)["layers"]} == {"torch-cuda"}
    else:
        assert cuda.returncode == 2
        assert cuda.stdout == ""
        lines = cuda.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("htmp: error: --device cuda: no GPU available"), cuda.stderr
        # Small matrices stay on the CPU under auto either way.
        assert {layer["backend"] for layer in json.loads(auto.stdout)["layers"]} == {"numpy"}
    conflict = run_htmp("analyze", str(small_checkpoint), "--device", "cuda", "--backend", "numpy")
    assert conflict.returncode == 2 and "--backend numpy" in conflict.stderr
