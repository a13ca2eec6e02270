"""Every format gives the same report for the same weights; tensors become the right matrices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from htmp_cli.fits.powerlaw import fit_power_law
from htmp_cli.loaders import open_checkpoint
from htmp_cli.loaders.matrices import MatrixRules, plan_matrices
from htmp_cli.options import AnalysisOptions
from htmp_cli.pipeline import analyze
from htmp_cli.results import report_to_dict
from tests.conftest import ROOT, run_htmp


def _layers(path: Path, **options) -> dict[str, dict]:
    report = report_to_dict(analyze(path, AnalysisOptions(**options)))
    layers = {}
    for layer in report["layers"]:
        layer.pop("timings")
        layers[layer["name"]] = layer
    return layers


@pytest.mark.parametrize("stem", ["cnn", "transformer"])
def test_same_weights_give_identical_reports_in_every_format(formats_dir: Path, stem: str) -> None:
    reference = _layers(formats_dir / f"{stem}.safetensors")
    assert len(reference) >= 4
    others = [f"{stem}.pt", f"{stem}_legacy.pt", f"{stem}.gguf"]
    if stem == "transformer":
        others += ["wrapped.pt", "hf_bin", "hf_bin/pytorch_model.bin.index.json", "hf_bin_legacy"]
    for other in others:
        layers = _layers(formats_dir / other)
        assert layers == reference, other


def test_formats_are_recognised_and_named(formats_dir: Path) -> None:
    expected = {
        "cnn.safetensors": "safetensors", "cnn.pt": "pytorch-zip", "cnn_legacy.pt": "pytorch-legacy",
        "cnn.gguf": "gguf", "hf_bin": "pytorch-zip-sharded", "hf_bin_legacy": "pytorch-legacy-sharded",
        "wrapped.pt": "pytorch-zip",
    }
    for name, fmt in expected.items():
        assert open_checkpoint(formats_dir / name).format == fmt, name
    wrapped = open_checkpoint(formats_dir / "wrapped.pt")
    assert any("'state_dict'" in note and "optimizer" in note for note in wrapped.notes)
    assert any("'module.'" in note for note in wrapped.notes)
    assert all(not e.name.startswith("module.") for e in wrapped.tensors)


def _pooled_eigenvalues(kernel: np.ndarray) -> np.ndarray:
    out, inp = kernel.shape[:2]
    slices = kernel.reshape(out, inp, -1)
    return np.sort(np.concatenate([np.linalg.svd(slices[:, :, k].astype(np.float64), compute_uv=False) ** 2
                                   for k in range(slices.shape[2])]))


def test_conv_kernels_pool_their_slices_or_unfold(formats_dir: Path, make_formats) -> None:
    weights = make_formats.cnn_weights()
    pooled = _layers(formats_dir / "cnn.pt")
    unfolded = _layers(formats_dir / "cnn.pt", conv="unfold")
    for name, kind, positions in (("features.3.weight", "conv2d", 9), ("temporal.conv.weight", "conv1d", 5)):
        kernel = weights[name]
        evals = _pooled_eigenvalues(kernel)
        layer = pooled[name]
        assert (layer["kind"], layer["slices"], layer["n_eigenvalues"]) == (kind, positions, evals.size)
        assert layer["shape"] == list(kernel.shape[:2])
        assert layer["metrics"]["norm"] == pytest.approx(evals.sum(), rel=1e-12)
        assert layer["metrics"]["spectral_norm"] == pytest.approx(evals[-1], rel=1e-12)
        reference = fit_power_law(evals)
        assert layer["power_law"]["alpha"] == pytest.approx(reference.alpha, rel=1e-9)
        assert layer["power_law"]["xmin"] == pytest.approx(reference.xmin, rel=1e-9)

        flat = kernel.reshape(kernel.shape[0], -1).astype(np.float64)
        sv2 = np.sort(np.linalg.svd(flat, compute_uv=False) ** 2)
        layer = unfolded[name]
        assert layer["shape"] == list(flat.shape) and layer["slices"] == 1
        assert layer["metrics"]["spectral_norm"] == pytest.approx(sv2[-1], rel=1e-12)
    # 1x1 kernels are one slice either way; depthwise (out, 1, k, k) slices are too thin to analyse.
    assert pooled["features.6.weight"]["slices"] == 1
    skipped = {s["name"]: s["reason"] for s in report_to_dict(analyze(formats_dir / "cnn.pt"))["skipped"]}
    assert "try --conv unfold" in skipped["features.0.weight"]
    assert "48x1" in skipped["features.8.weight"]


def test_conv_reproduces_weightwatcher_pooling(formats_dir: Path, tmp_path: Path) -> None:
    """WeightWatcher 0.7.7 run live on the CNN: its pooled conv2d layers, with their eigenvalues
    halved, match `--fit ww` (it silently drops the conv1d; htmp analyses it)."""
    import subprocess
    import sys

    (tmp_path / "ww").mkdir()
    shutil.copy(formats_dir / "cnn.safetensors", tmp_path / "ww" / "model.safetensors")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ww_reference.py"), str(tmp_path / "ww"),
                    str(tmp_path / "ww.json")], check=True, capture_output=True)
    ww = {row["name"] + ".weight": row for row in json.loads((tmp_path / "ww.json").read_text())["layers"]}
    ours = _layers(formats_dir / "cnn.safetensors", fit="ww", min_dim=1)
    assert set(ww) == set(ours) - {"temporal.conv.weight"}
    for name, row in ww.items():
        fit = ours[name]["power_law"]
        for key in ("alpha", "xmin", "D"):
            assert fit[key] == pytest.approx(row[key], rel=1e-9), (name, key)
        assert fit["tail_size"] == row["tail_size"]


def test_stacked_experts_become_one_matrix_each_and_are_grouped(formats_dir: Path, make_formats) -> None:
    stack = make_formats.transformer_weights()["h.1.mlp.experts.w1"]
    for path in ("transformer.safetensors", "transformer.pt", "transformer.gguf"):
        report = report_to_dict(analyze(formats_dir / path))
        layers = {layer["name"]: layer for layer in report["layers"]}
        for k in range(stack.shape[0]):
            layer = layers[f"h.1.mlp.experts.w1:expert{k}"]
            sv2 = np.linalg.svd(stack[k].astype(np.float64), compute_uv=False) ** 2
            assert layer["kind"] == "expert" and layer["group"] == "h.1.mlp.experts.w1"
            assert layer["metrics"]["spectral_norm"] == pytest.approx(sv2.max(), rel=1e-12)
        groups = {g["name"]: g for g in report["summary"]["expert_groups"]}
        assert groups["h.1.mlp.experts.w1"]["n_experts"] == 4
        assert groups["h.1.moe.experts.*.w2.weight"]["n_experts"] == 2


def test_split_fused_projections(formats_dir: Path, make_formats) -> None:
    weights = make_formats.transformer_weights()
    whole = _layers(formats_dir / "transformer.pt")
    split = _layers(formats_dir / "transformer.pt", split_fused=True)
    assert whole["h.0.attn.c_attn.weight"]["kind"] == "fused-qkv"
    assert "h.0.attn.c_attn.weight" not in split
    c_attn = weights["h.0.attn.c_attn.weight"]  # GPT-2 Conv1D: (in, 3 * out), split along columns
    qkv = weights["h.1.self_attn.qkv_proj.weight"]  # Linear: (3 * out, in), split along rows
    for k, part in enumerate("qkv"):
        for name, matrix in (("h.0.attn.c_attn.weight", c_attn[:, 256 * k : 256 * (k + 1)]),
                             ("h.1.self_attn.qkv_proj.weight", qkv[256 * k : 256 * (k + 1)])):
            layer = split[f"{name}:{part}"]
            sv2 = np.linalg.svd(matrix.astype(np.float64), compute_uv=False) ** 2
            assert layer["shape"] == [256, 256] and layer["kind"] == "attention"
            assert layer["metrics"]["spectral_norm"] == pytest.approx(sv2.max(), rel=1e-12)
    gqa = split["h.1.self_attn.Wqkv.weight"]
    assert gqa["kind"] == "fused-qkv" and "not three equal parts" in gqa["note"]


def test_query_key_value_is_not_split_and_says_why(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({"gpt_neox.layers.0.attention.query_key_value.weight": rng.standard_normal((96, 32)).astype(np.float32)},
              str(tmp_path / "m.safetensors"))
    specs, _ = plan_matrices(open_checkpoint(tmp_path / "m.safetensors").tensors, MatrixRules(split_fused=True))
    assert len(specs) == 1 and "interleave" in specs[0].note


def test_include_exclude_and_skip_embeddings(formats_dir: Path) -> None:
    tensors = open_checkpoint(formats_dir / "transformer.gguf").tensors
    specs, skipped = plan_matrices(tensors, MatrixRules(skip_embeddings=True))
    names = {s.name for s in specs}
    assert "wte.weight" not in names and "lm_head.weight" not in names
    reasons = {s.name: s.reason for s in skipped}
    assert "--skip-embeddings" in reasons["wte.weight"] and "--skip-embeddings" in reasons["lm_head.weight"]

    specs, skipped = plan_matrices(tensors, MatrixRules(include=(r"^h\.1\.",), exclude=("experts",)))
    assert {s.tensor for s in specs} == {"h.1.self_attn.qkv_proj.weight", "h.1.self_attn.Wqkv.weight"}
    reasons = {s.name: s.reason for s in skipped}
    assert reasons["wte.weight"] == "not matched by --include"
    assert reasons["h.1.mlp.experts.w1"] == "excluded by --exclude 'experts'"

    result = run_htmp("analyze", str(formats_dir / "transformer.gguf"), "--include", "(")
    assert result.returncode == 2 and "--include '('" in result.stderr


def test_every_layer_has_a_kind_in_every_output(formats_dir: Path) -> None:
    result = run_htmp("analyze", str(formats_dir / "transformer.pt"), "--format", "csv")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    kind = header.split(",").index("kind")
    assert {row.split(",")[kind] for row in rows} == {"embedding", "fused-qkv", "linear", "expert", "head"}
    table = run_htmp("analyze", str(formats_dir / "transformer_q4_k.gguf"))
    assert table.returncode == 0, table.stderr
    assert "Q4_K" in table.stdout and "experts h.1.mlp.experts.w1: 4 experts" in table.stdout


def test_hugging_face_folders_say_what_they_hold(formats_dir: Path, tmp_path: Path) -> None:
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(formats_dir / "transformer.safetensors", both / "model.safetensors")
    shutil.copy(formats_dir / "transformer.pt", both / "pytorch_model.bin")
    checkpoint = open_checkpoint(both)
    assert checkpoint.format == "safetensors"
    assert checkpoint.notes[0] == "folder: found model.safetensors, pytorch_model.bin; analysing model.safetensors"
    (both / "model.safetensors").unlink()
    checkpoint = open_checkpoint(both)
    assert checkpoint.format == "pytorch-zip" and checkpoint.notes[0] == "folder: found pytorch_model.bin"
    result = run_htmp("analyze", str(both), "-f", "json")
    assert json.loads(result.stdout)["source"]["notes"][0] == "folder: found pytorch_model.bin"

    sharded = open_checkpoint(formats_dir / "hf_bin")
    assert sharded.format == "pytorch-zip-sharded" and len(sharded.files) == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("hi")
    result = run_htmp("ls", str(empty))
    assert result.returncode == 2 and "no checkpoint found" in result.stderr and "README.md" in result.stderr


def test_a_shard_index_pointing_outside_its_folder_is_refused(formats_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "escape"
    folder.mkdir()
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "../outside.bin"}}))
    torch_file = formats_dir / "cnn.pt"
    shutil.copy(torch_file, tmp_path / "outside.bin")
    result = run_htmp("ls", str(folder))
    assert result.returncode == 2 and "resolves outside the checkpoint folder" in result.stderr
