"""GGUF: the header parser against the gguf package, quantised reads, hostile headers, and opening speed."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders import open_checkpoint
from htmp_cli.loaders.dtypes import QUANTIZED_DTYPES
from htmp_cli.loaders.gguf_file import GGML_TYPES
from tests.conftest import run_htmp


def test_type_table_matches_the_gguf_package() -> None:
    import gguf
    import gguf.quants

    package = {t.value: (t.name, *gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGMLQuantizationType}
    assert GGML_TYPES == package
    dequantisable = set()
    for t in gguf.GGMLQuantizationType:
        block, size = gguf.GGML_QUANT_SIZES[t]
        if t.name in ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"):
            continue
        try:
            gguf.quants.dequantize(np.zeros((1, size), dtype=np.uint8), t)
        except NotImplementedError:
            continue
        dequantisable.add(t.name)
    assert set(QUANTIZED_DTYPES) == dequantisable - {"BF16"}


def test_unquantised_gguf_reads_the_source_bit_for_bit(formats_dir: Path, make_formats) -> None:
    weights = make_formats.transformer_weights()
    checkpoint = open_checkpoint(formats_dir / "transformer.gguf")
    for entry in checkpoint.tensors:
        source = weights[entry.name]
        assert entry.shape == source.shape, entry.name  # PyTorch's (out, in) order
        if entry.dtype == "I32":
            continue
        values = checkpoint.read(entry)
        np.testing.assert_array_equal(values, source.astype(values.dtype))


def _element_bound(source: np.ndarray, qtype: str) -> np.ndarray:
    """The largest rounding error each element may carry: about half a quantisation step of its block
    (Q8_0: 32 values, step absmax / 127) or sub-block (Q4_K: 32 values, step range / 15 and a little
    more for the 6-bit scales)."""
    blocks = source.reshape(-1, 32).astype(np.float64)
    if qtype == "Q8_0":
        step = np.abs(blocks).max(axis=1) / 127
        # Codes are rounded against the exact step, decoded with its float16 rounding (relative
        # error <= 2^-11), which moves a code of at most 127 by up to 127 * 2^-11 steps.
        bound = (0.5 + 127 * 2.0**-11) * step
    else:
        # The fixtures' writer rounds offsets and steps up: the offset overshoots the minimum by
        # less than dmin, the 6-bit step overshoots what the range needs by less than d.
        low = np.minimum(blocks.min(axis=1), 0).reshape(-1, 8)
        dmin = (-low).max(axis=1, keepdims=True) / 63 * (1 + 2.0**-9)
        needed = (blocks.max(axis=1).reshape(-1, 8) - low + dmin) / 15
        d = needed.max(axis=1, keepdims=True) / 63 * (1 + 2.0**-9)
        bound = (0.5 * (needed + d)).ravel()
    return np.repeat(bound, 32).reshape(source.shape) + 1e-7


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_quantised_gguf_spectra_within_the_quantisation_error(formats_dir: Path, make_formats, qtype: str) -> None:
    """htmp's matrix is exactly the gguf package's dequantisation; each element is within half a
    quantisation step of the source; so each singular value is within ||A - B||_2 of the source's
    (Weyl). Measured here: singular values move by at most 0.06% (Q8_0) and 1.4% (Q4_K) of the largest."""
    import gguf
    import gguf.quants

    weights = make_formats.transformer_weights()
    checkpoint = open_checkpoint(formats_dir / f"transformer_{qtype.lower()}.gguf")
    quantised = [e for e in checkpoint.tensors if e.dtype == qtype]
    assert len(quantised) >= 8
    for entry in quantised:
        ours = checkpoint.read(entry)
        raw = np.fromfile(entry.file, dtype=np.uint8, count=entry.nbytes, offset=entry.offset)
        package = gguf.quants.dequantize(raw.reshape(*entry.shape[:-1], -1), getattr(gguf.GGMLQuantizationType, qtype))
        np.testing.assert_array_equal(ours, package)
        source = weights[entry.name]
        assert np.all(np.abs(ours - source) <= _element_bound(source, qtype)), entry.name
        for A, B in zip(source.astype(np.float64).reshape(-1, *source.shape[-2:]),
                        ours.astype(np.float64).reshape(-1, *source.shape[-2:])):
            s_source = np.linalg.svd(A, compute_uv=False)
            s_quant = np.linalg.svd(B, compute_uv=False)
            assert np.max(np.abs(s_source - s_quant)) <= np.linalg.norm(A - B, 2) * (1 + 1e-9)


def test_q4_k_writer_of_the_fixtures_is_faithful(make_formats) -> None:
    import gguf
    import gguf.quants

    for seed, scale in ((3, 1.0), (4, 1e-3), (5, 50.0)):
        x = (np.random.default_rng(seed).standard_t(3, (8, 512)) * scale).astype(np.float32)
        y = gguf.quants.dequantize(make_formats.quantize_q4_k(x), gguf.GGMLQuantizationType.Q4_K)
        assert np.all(np.abs(x - y) <= _element_bound(x, "Q4_K"))


# --- hostile and broken headers -------------------------------------------------------------

def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def _gguf(tensors: list[tuple[str, list[int], int, int]], data: bytes, kv: bytes = b"", n_kv: int = 0,
          version: int = 3, alignment: int = 32, n_tensors: int | None = None) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors, n_kv) + kv
    for name, dims, type_id, offset in tensors:
        head += _string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", type_id, offset)
    head += b"\0" * (-len(head) % alignment)
    return head + data


def _valid(tmp_path: Path) -> Path:
    data = np.arange(32 * 16, dtype=np.float32).tobytes()
    path = tmp_path / "ok.gguf"
    path.write_bytes(_gguf([("a.weight", [32, 8], 0, 0), ("b.weight", [32, 8], 0, 1024)], data))
    return path


def test_a_hand_written_gguf_opens(tmp_path: Path) -> None:
    checkpoint = open_checkpoint(_valid(tmp_path))
    assert [(e.name, e.shape, e.dtype) for e in checkpoint.tensors] == [("a.weight", (8, 32), "F32"),
                                                                         ("b.weight", (8, 32), "F32")]
    np.testing.assert_array_equal(checkpoint.read(checkpoint.tensors[1]).ravel(), np.arange(256, 512))


BROKEN = {
    "magic": (lambda: b"GGUX" + b"\0" * 40, "not a GGUF file"),
    "version": (lambda: _gguf([], b"", version=7), "version 7"),
    "big-endian": (lambda: b"GGUF" + struct.pack(">I", 3) + b"\0" * 20, "big-endian"),
    "huge-count": (lambda: _gguf([], b"", n_tensors=2**60), "more than a"),
    "truncated-table": (lambda: _gguf([("a", [32, 8], 0, 0)], b"")[:40], "past the end"),
    "data-past-end": (lambda: _gguf([("a", [32, 8], 0, 0)], b"\0" * 100), "truncated"),
    "offset-out-of-range": (lambda: _gguf([("a", [32, 1], 0, 2**40)], b"\0" * 128), "truncated"),
    "misaligned": (lambda: _gguf([("a", [32, 1], 0, 4)], b"\0" * 256), "alignment"),
    "overlap": (lambda: _gguf([("a", [32, 2], 0, 0), ("b", [32, 2], 0, 128)], b"\0" * 512), "overlaps"),
    "unknown-type": (lambda: _gguf([("a", [32, 1], 99, 0)], b"\0" * 128), "unknown ggml type 99"),
    "partial-block": (lambda: _gguf([("a", [30, 1], 8, 0)], b"\0" * 128), "block size"),
    "rank": (lambda: _gguf([("a", [1, 1, 1, 1, 1], 0, 0)], b"\0" * 64), "dims"),
    "duplicate": (lambda: _gguf([("a", [8], 0, 0), ("a", [8], 0, 32)], b"\0" * 64), "twice"),
    "huge-string": (lambda: b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 2**62) + b"x" * 64, "past the end"),
    "kv-type": (lambda: _gguf([], b"", kv=_string("k") + struct.pack("<I", 77), n_kv=1), "unknown value type"),
    "string-array": (lambda: _gguf([], b"", kv=_string("t") + struct.pack("<IIQ", 9, 8, 2**40), n_kv=1), "strings"),
    "alignment": (lambda: _gguf([], b"", kv=_string("general.alignment") + struct.pack("<II", 4, 24), n_kv=1),
                  "power of two"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_gguf_headers_are_refused_with_a_reason(tmp_path: Path, case: str) -> None:
    make, message = BROKEN[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(make())
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(path)
    result = run_htmp("ls", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_gguf_files_open_or_fail_cleanly(tmp_path: Path, data: st.DataObject) -> None:
    original = bytearray(_gguf([("a.weight", [32, 8], 0, 0), ("b.weight", [32, 4], 8, 1024)],
                               np.zeros(1024 + 4 * 34, dtype=np.uint8).tobytes(),
                               kv=_string("general.name") + struct.pack("<I", 8) + _string("x"), n_kv=1))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, 200))
        original[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(original[:cut]) if data.draw(st.booleans()) else bytes(original))
    try:
        checkpoint = open_checkpoint(path)
    except CheckpointError:
        return
    for entry in checkpoint.tensors:  # what opened must also read
        assert checkpoint.read(entry).shape == entry.shape


# --- folders and speed ----------------------------------------------------------------------

def _write_split(path: Path, number: int, count: int, name: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_uint16("split.no", number)
    writer.add_uint16("split.count", count)
    writer.add_tensor(name, np.eye(16, dtype=np.float32) * (number + 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_folders_splits_and_strangers(tmp_path: Path) -> None:
    split = tmp_path / "split"
    split.mkdir()
    _write_split(split / "m-00001-of-00002.gguf", 0, 2, "blk.0.w")
    _write_split(split / "m-00002-of-00002.gguf", 1, 2, "blk.1.w")
    checkpoint = open_checkpoint(split)
    assert checkpoint.format == "gguf-split" and [e.name for e in checkpoint.tensors] == ["blk.0.w", "blk.1.w"]
    assert any("2 GGUF splits" in note for note in checkpoint.notes)
    one = open_checkpoint(split / "m-00001-of-00002.gguf")
    assert any("one of 2 splits" in note for note in one.notes)

    strangers = tmp_path / "zoo"
    strangers.mkdir()
    _write_split(strangers / "a.gguf", 0, 1, "w")
    _write_split(strangers / "b.gguf", 0, 1, "w")
    result = run_htmp("analyze", str(strangers))
    assert result.returncode == 2 and "2 GGUF files that are not splits of one model (a.gguf, b.gguf)" in result.stderr


def test_opening_a_250_mb_gguf_with_a_large_vocabulary_is_fast(tmp_path: Path, make_formats) -> None:
    path = tmp_path / "big.gguf"
    make_formats.write_big_gguf(path)
    assert path.stat().st_size > 240 * 2**20
    started = time.perf_counter()
    checkpoint = open_checkpoint(path)
    seconds = time.perf_counter() - started
    assert len(checkpoint.tensors) == 16
    # Measured 0.015 s here (benchmarks/bench_gguf_open.py); the bound leaves room for a loaded machine.
    assert seconds < 0.5, seconds
    result = run_htmp("ls", str(path))
    assert result.returncode == 0 and "16 matrices to analyse" in result.stdout


# --- quantised tensors, block by block --------------------------------------------------------

def _random_codes(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Valid blocks of random codes: random quants, float16 scales of sane size (the first 2 bytes
    of every block; Q4_K's next 2 are its dmin)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)]
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    codes[..., 0:2] = rng.uniform(0.005, 0.02, (rows, cols // block)).astype(np.float16)[..., None].view(np.uint8)
    if qtype == "Q4_K":
        codes[..., 2:4] = rng.uniform(0.001, 0.004, (rows, cols // block)).astype(np.float16)[..., None].view(np.uint8)
    return codes.reshape(rows, -1)


def _write_quantised(path: Path, name: str, codes: np.ndarray, qtype: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tensor(name, codes, raw_shape=codes.shape, raw_dtype=getattr(gguf.GGMLQuantizationType, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_quantised_matrix_parts_are_parts_of_the_whole_dequantisation(tmp_path: Path, qtype: str) -> None:
    import gguf.quants

    from htmp_cli.loaders.gguf_file import QuantizedMatrix

    codes = _random_codes(qtype, 12, 768, seed=1)
    path = tmp_path / "q.gguf"
    _write_quantised(path, "blk.0.attn_qkv.weight", codes, qtype)
    checkpoint = open_checkpoint(path)
    stored, decode = checkpoint.read_stored(checkpoint.tensors[0])
    assert isinstance(stored, QuantizedMatrix) and stored.shape == (12, 768)
    whole = gguf.quants.dequantize(codes, getattr(gguf.GGMLQuantizationType, qtype))
    np.testing.assert_array_equal(checkpoint.read(checkpoint.tensors[0]), whole)
    np.testing.assert_array_equal(np.asarray(stored), whole)
    for key in (slice(3, 7), 5, (slice(None), slice(256, 512)), (slice(2, 9), slice(0, 768)),
                (slice(None), slice(100, 300)), (slice(None), slice(250, 257)), (slice(1, 4), 17), (slice(None), slice(512, 512))):
        part = stored[key]
        np.testing.assert_array_equal(decode(part), whole[key], err_msg=str(key))
    assert isinstance(stored[:, 256:512], QuantizedMatrix)  # whole blocks: no floats yet
    assert isinstance(stored[3:7], QuantizedMatrix)
    np.testing.assert_array_equal(stored.reshape(12, 3, 256), whole.reshape(12, 3, 256))


@pytest.mark.parametrize("qtype, rows", [("Q8_0", 65536), ("Q4_K", 32768)])
def test_quantised_gguf_is_dequantised_block_by_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      qtype: str, rows: int) -> None:
    """A tall quantised matrix never exists whole in float32: peak memory while it is analysed is
    its codes plus one block (2 MiB here, standing in for the 64 MB of a large matrix), not the
    float32 matrix (measured: Q8_0 33% of it, of which the codes are 27%; 229% before, when
    it was dequantised whole); and the spectrum is the one of the whole dequantised matrix."""
    import tracemalloc
    from functools import partial

    import gguf.quants

    from htmp_cli import spectral
    from htmp_cli.loaders.matrices import plan_matrices
    from htmp_cli.options import AnalysisOptions
    from htmp_cli.layers import analyze_matrix

    cols = 256
    codes = _random_codes(qtype, rows, cols, seed=2)
    path = tmp_path / "tall.gguf"
    _write_quantised(path, "token_embd.weight", codes, qtype)
    checkpoint = open_checkpoint(path)
    (spec,), _ = plan_matrices(checkpoint.tensors)
    monkeypatch.setattr(spectral, "_BLOCK_BYTES", 2 * 2**20)
    options = AnalysisOptions(htmp=False)
    float32_bytes = rows * cols * 4
    tracemalloc.start()
    try:
        result = analyze_matrix(spec, partial(checkpoint.read_matrix, spec), options, keep_eigenvalues=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "success", result.reason
    assert peak < 0.40 * float32_bytes, (peak / 2**20, float32_bytes / 2**20)
    assert peak - codes.nbytes < 0.15 * float32_bytes, ((peak - codes.nbytes) / 2**20, float32_bytes / 2**20)

    W = gguf.quants.dequantize(codes, getattr(gguf.GGMLQuantizationType, qtype)).astype(np.float64)
    expected = np.linalg.eigvalsh(W.T @ W)
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=1e-10, atol=1e-10 * expected.max())


def test_a_wide_quantised_matrix_is_dequantised_a_column_block_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Column blocks that cut through quantisation blocks (here 300 columns of 256-wide Q4_K blocks)
    give the spectrum of the whole dequantised matrix."""
    import gguf.quants

    from htmp_cli import spectral

    codes = _random_codes("Q4_K", 96, 8192, seed=3)
    path = tmp_path / "wide.gguf"
    _write_quantised(path, "output.weight", codes, "Q4_K")
    checkpoint = open_checkpoint(path)
    stored, decode = checkpoint.read_stored(checkpoint.tensors[0])
    monkeypatch.setattr(spectral, "_BLOCK_BYTES", 96 * 8 * 300)
    ours = spectral.eigenvalues(stored, decode=decode).eigenvalues
    W = gguf.quants.dequantize(codes, gguf.GGMLQuantizationType.Q4_K).astype(np.float64)
    expected = np.linalg.eigvalsh(W @ W.T)
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-10 * expected.max())


@pytest.fixture(scope="module")
def llama_formats(make_formats, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A tiny LLaMA-shaped model as Hugging Face safetensors and as GGUF F32, Q8_0 and Q4_K under
    llama.cpp's names (make_formats.write_llama), and one extra matrix no map knows."""
    out = tmp_path_factory.mktemp("llama")
    make_formats.write_llama(out)
    weights = make_formats.llama_weights()
    weights["model.custom_proj.weight"] = np.eye(32, dtype=np.float32) + 0.1
    make_formats.write_safetensors_file(out / "extra.safetensors", weights)
    del weights["model.custom_proj.weight"]
    make_formats.write_gguf(out / "unpermuted.gguf", make_formats.llama_as_gguf(weights, permute=False), arch="llama")
    return out


def _cross_diff(folder, gguf_path):  # type: ignore[no-untyped-def]
    proc = run_htmp("diff", str(folder), str(gguf_path), "-f", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_diff_pairs_hugging_face_names_with_llama_cpp_names(llama_formats) -> None:  # type: ignore[no-untyped-def]
    f32 = _cross_diff(llama_formats / "llama", llama_formats / "llama-F32.gguf")
    assert f32["schema"] == "htmp.diff/2" and "gguf package's map for llama" in f32["pairing"]
    assert len(f32["layers"]) == 16 and f32["only_before"] == [] and f32["only_after"] == []
    names = {layer["before_name"]: layer["name"] for layer in f32["layers"]}
    assert names["model.layers.1.self_attn.q_proj.weight"] == "blk.1.attn_q.weight"
    assert names["model.embed_tokens.weight"] == "token_embd.weight" and names["lm_head.weight"] == "output.weight"
    for layer in f32["layers"]:
        # The same weights (q and k rows in llama.cpp's order): the spectra agree to rounding, and a
        # KS distance of samples equal to rounding is its resolution, one eigenvalue of M (128 or 256).
        assert not layer["phase_changed"] and layer["ks_esd"] <= 1 / 128
        for metric in ("alpha", "stable_rank", "log_norm", "log_spectral_norm", "alpha_weighted"):
            change = layer["metrics"][metric]
            assert abs(change["delta"]) <= 1e-9 * max(1.0, abs(change["before"])), (layer["name"], metric, change)
        assert abs(layer["metrics"]["kappa"]["relative"]) < 1e-4
    assert f32["alpha_rank_correlation"] == pytest.approx(1.0)
    # Without llama.cpp's rotary row order the bytes are the same, and so is every number.
    same = _cross_diff(llama_formats / "llama", llama_formats / "unpermuted.gguf")
    assert len(same["layers"]) == 16 and all(layer["ks_esd"] == 0 for layer in same["layers"])
    assert all(change["delta"] in (0, None) for layer in same["layers"] for change in layer["metrics"].values())
    quantised = {q: _cross_diff(llama_formats / "llama", llama_formats / f"llama-{q}.gguf") for q in ("Q8_0", "Q4_K")}
    ks = {q: [layer["ks_esd"] for layer in d["layers"]] for q, d in quantised.items()}
    assert all(a < b for a, b in zip(ks["Q8_0"], ks["Q4_K"]))  # every layer's ESD moves less under Q8_0
    for metric in ("stable_rank", "alpha"):
        moved = {q: np.median([abs(layer["metrics"][metric]["relative"]) for layer in d["layers"]])
                 for q, d in quantised.items()}
        assert moved["Q8_0"] < moved["Q4_K"], (metric, moved)
    assert quantised["Q8_0"]["alpha_rank_correlation"] > quantised["Q4_K"]["alpha_rank_correlation"]


def test_cross_format_diff_names_the_layers_it_could_not_pair(llama_formats) -> None:  # type: ignore[no-untyped-def]
    data = _cross_diff(llama_formats / "extra.safetensors", llama_formats / "llama-F32.gguf")
    assert data["only_before"] == ["model.custom_proj.weight"]
    assert data["unpaired"] == [{"name": "model.custom_proj.weight",
                                 "why": "no llama.cpp name for it in the gguf package's map for llama"}]
    table = run_htmp("diff", str(llama_formats / "extra.safetensors"), str(llama_formats / "llama-Q8_0.gguf"))
    assert table.returncode == 0, table.stderr
    assert "only in before (1): model.custom_proj.weight (no llama.cpp name" in table.stdout
    assert "rank correlation of the paired layers' alphas" in table.stdout and "KS ESD" in table.stdout
