"""LoRA adapters made by the real peft library: the updates' spectra, the merge, what is refused."""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import htmp_cli
from htmp_cli.adapter import analyze_adapter
from htmp_cli.errors import CheckpointError
from htmp_cli.options import AnalysisOptions
from tests.conftest import _load_fixture_module, run_htmp

import peft  # noqa: F401  (in the test extra: missing, the module fails to import, loudly)


@pytest.fixture(scope="module")
def made() -> object:
    return _load_fixture_module("make_adapters")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory, made) -> tuple[Path, object]:  # type: ignore[no-untyped-def]
    """OUT/base, OUT/adapter, OUT/merged as fixtures/make_adapters.py writes them, and the PeftModel."""
    out = tmp_path_factory.mktemp("llama")
    made.tiny_llama().save_pretrained(str(out / "base"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = made.write_lora(made.tiny_llama(), out / "adapter", **made.LLAMA_LORA)
    deltas = _deltas(peft_model)
    peft_model.merge_and_unload().save_pretrained(str(out / "merged"))
    return out, deltas


def _deltas(peft_model) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Each adapted module's Delta W as peft itself computes it (get_delta_weight, on a float64 copy of
    the model, so that the reference has no float32 rounding), by weight name."""
    import copy

    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in copy.deepcopy(peft_model).double().base_model.model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.scaling:
            deltas[f"{name}.weight"] = module.get_delta_weight("default").detach().double().numpy()
    return deltas


def _squared_singular_values(delta: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(delta, compute_uv=False) ** 2)


def test_update_eigenvalues_are_those_of_the_dense_delta_w(llama) -> None:  # type: ignore[no-untyped-def]
    out, deltas = llama
    report = htmp_cli.analyze(out / "adapter", jobs=1)
    assert report.source.format == "peft-lora-safetensors"
    assert {layer.name for layer in report.layers} == set(deltas)  # named by the weight each one changes
    for layer in report.layers:
        dense = _squared_singular_values(deltas[layer.name])
        assert layer.shape == deltas[layer.name].shape
        assert layer.eigenvalues.size == min(layer.shape)
        np.testing.assert_allclose(layer.eigenvalues[-layer.update_rank:], dense[-layer.update_rank:],
                                   rtol=1e-10, atol=1e-12 * dense[-1])
        assert layer.n_zero == min(layer.shape) - layer.update_rank
        assert f"rank {layer.update_rank}" in layer.note and "tail fit is limited" in layer.note
    ranks = {layer.name.split(".")[-2]: layer.update_rank for layer in report.layers}
    assert ranks["down_proj"] == 12 and ranks["q_proj"] == 16  # rank_pattern
    # alpha_pattern: v_proj's scale is 8 / 16, q_proj's 32 / 16 (checked through the norms above too)
    assert "scale 0.5" in report.layer("model.layers.0.self_attn.v_proj.weight").note
    assert "scale 2 " in report.layer("model.layers.0.self_attn.q_proj.weight").note
    assert any("saved with the adapter" in s.reason for s in report.skipped)  # the resized embedding's full copy


def test_merged_model_matches_merge_and_unload_analysed_as_a_model(llama) -> None:  # type: ignore[no-untyped-def]
    out, deltas = llama
    result = htmp_cli.analyze_adapter(out / "adapter", out / "base", jobs=1)
    assert isinstance(result, htmp_cli.AdapterAnalysis) and result.unpaired == ()
    names = [layer.name for layer in result.merged.layers]
    assert sorted(names) == sorted(deltas)
    merged = htmp_cli.analyze(out / "merged", include=[f"^{re.escape(n)}$" for n in names], jobs=1)
    for ours in result.merged.layers:
        theirs = merged.layer(ours.name)
        # merge_and_unload() adds Delta W in float32; htmp in float64: they differ by float32 rounding.
        assert ours.power_law.alpha == pytest.approx(theirs.power_law.alpha, rel=1e-5)
        assert ours.metrics.stable_rank == pytest.approx(theirs.metrics.stable_rank, rel=1e-5)
        assert ours.metrics.log_norm == pytest.approx(theirs.metrics.log_norm, rel=1e-6, abs=1e-7)
        assert ours.kappa == pytest.approx(theirs.kappa, rel=1e-3)
        assert ours.phase.phase == theirs.phase.phase
    base = htmp_cli.analyze(out / "base", include=[f"^{re.escape(n)}$" for n in names], jobs=1)
    for change in result.diff.layers:
        before = base.layer(change.name)
        assert change.metrics["alpha"].before == pytest.approx(before.power_law.alpha, rel=1e-12)
        assert change.metrics["alpha"].after == pytest.approx(merged.layer(change.name).power_law.alpha, rel=1e-5)
    assert len(result.diff.layers) == len(deltas)


def test_base_and_merged_through_the_command_line(llama, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, deltas = llama
    proc = run_htmp("analyze", str(out / "adapter"), "--base", str(out / "base"), "-f", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["schema"] == "htmp.adapter/1"
    assert {layer["name"] for layer in data["update"]["layers"]} == set(deltas)
    assert all(layer["update_rank"] in (12, 16) for layer in data["update"]["layers"])
    assert {layer["name"] for layer in data["diff"]["layers"]} == set(deltas)
    assert all(layer["update_rank"] is None for layer in data["merged"]["layers"])
    table = run_htmp("analyze", str(out / "adapter"), "--base", str(out / "base"))
    assert table.returncode == 0, table.stderr
    assert "LoRA updates: 7 updates" in table.stdout and "htmp diff: base" in table.stdout
    listing = run_htmp("ls", str(out / "adapter"))
    assert listing.returncode == 0, listing.stderr
    assert "A factor of the update model.layers.0.self_attn.q_proj.weight" in listing.stdout
    assert "7 matrices to analyse" in listing.stdout
    # --base on what is not an adapter: exit 2, one line naming it
    wrong = run_htmp("analyze", str(out / "base"), "--base", str(out / "base"))
    assert wrong.returncode == 2 and "not a LoRA adapter" in wrong.stderr and len(wrong.stderr.splitlines()) == 1


def test_a_rank_below_min_tail_fails_the_fit_with_the_reason(made, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    made.write_lora(made.tiny_llama(), tmp_path / "r4", r=4, lora_alpha=8, target_modules=["q_proj"])
    report = htmp_cli.analyze(tmp_path / "r4", jobs=1)
    for layer in report.layers:
        assert layer.status == "success" and layer.power_law.status == "failed"
        assert layer.power_law.alpha is None or not np.isfinite(layer.power_law.alpha)
        assert "LoRA rank 4: the update has 4 non-zero eigenvalues, fewer than the 10" in layer.power_law.reason


def test_rslora_conv_and_fan_in_fan_out_updates(made, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(12, 24, 3)
            self.fc = torch.nn.Linear(40, 30)

    torch.manual_seed(0)
    peft_model = made.write_lora(Net(), tmp_path / "conv", r=10, lora_alpha=20, use_rslora=True,
                                 target_modules=["conv", "fc"])
    deltas = _deltas(peft_model)
    for conv in ("pooled", "unfold"):
        report = htmp_cli.analyze(tmp_path / "conv", conv=conv, min_dim=8, jobs=1)
        layer = report.layer("conv.weight")
        delta = deltas["conv.weight"]  # (24, 12, 3, 3)
        if conv == "pooled":
            dense = np.sort(np.concatenate([np.linalg.svd(delta[:, :, i, j], compute_uv=False) ** 2
                                            for i in range(3) for j in range(3)]))
            assert layer.slices == 9 and layer.kind == "conv2d"
        else:
            dense = _squared_singular_values(delta.reshape(24, -1))
        np.testing.assert_allclose(np.sort(layer.eigenvalues)[-90:], dense[-90:], rtol=1e-9, atol=1e-12 * dense[-1])
        fc = report.layer("fc.weight")
        np.testing.assert_allclose(fc.eigenvalues[-10:], _squared_singular_values(deltas["fc.weight"])[-10:], rtol=1e-10)
        assert "rsLoRA" in fc.note and f"scale {20 / np.sqrt(10):g}" in fc.note
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=48, n_layer=1, n_head=4, vocab_size=64, n_positions=32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = made.write_lora(gpt2, tmp_path / "gpt2", r=12, lora_alpha=12, target_modules=["c_attn"],
                                     fan_in_fan_out=True)
    gpt2.save_pretrained(str(tmp_path / "gpt2-base"))  # the base, as get_peft_model left it unmerged
    deltas = _deltas(peft_model)
    report = htmp_cli.analyze(tmp_path / "gpt2", jobs=1)
    layer = report.layer("transformer.h.0.attn.c_attn.weight")
    assert layer.shape == (48, 144) == deltas[layer.name].shape  # Conv1D's (in, out) layout
    np.testing.assert_allclose(layer.eigenvalues[-12:], _squared_singular_values(deltas[layer.name])[-12:], rtol=1e-10)


def test_dora_and_other_peft_types_are_skipped_with_the_reason(made, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    made.write_lora(made.tiny_llama(), tmp_path / "dora", r=16, lora_alpha=16, target_modules=["q_proj"], use_dora=True)
    report = htmp_cli.analyze(tmp_path / "dora", jobs=1)
    assert report.layers == ()
    assert report.skipped and all("DoRA" in s.reason for s in report.skipped)
    from peft import IA3Config, get_peft_model

    get_peft_model(made.tiny_llama(), IA3Config(target_modules=["q_proj", "down_proj"],
                                                feedforward_modules=["down_proj"])).save_pretrained(str(tmp_path / "ia3"))
    report = htmp_cli.analyze(tmp_path / "ia3", jobs=1)
    assert report.layers == () and report.skipped
    assert all("PEFT type IA3" in s.reason for s in report.skipped)


def test_an_adapter_without_its_config_is_analysed_with_scale_one(llama, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, deltas = llama
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((out / "adapter" / "adapter_model.safetensors").read_bytes())
    report = htmp_cli.analyze(lone, jobs=1)
    assert any("scale lora_alpha / r is unknown and taken as 1" in note for note in report.source.notes)
    q = report.layer("model.layers.0.self_attn.q_proj.weight")
    np.testing.assert_allclose(q.eigenvalues[-16:], _squared_singular_values(deltas[q.name] / 2.0)[-16:], rtol=1e-10)


def test_a_large_update_is_never_formed(tmp_path: Path) -> None:
    """A 200,000 x 150,000 update of rank 16 (240 GB as float64) from its 22 MB of factors, in seconds."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((16, 150_000)).astype(np.float32), rng.standard_normal((200_000, 16)).astype(np.float32)
    save_file({"base_model.model.big.lora_A.weight": A, "base_model.model.big.lora_B.weight": B},
              str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 16}))
    started = time.perf_counter()
    layer = htmp_cli.analyze(tmp_path, jobs=1, htmp=False).layer("big.weight")
    assert time.perf_counter() - started < 60
    assert layer.shape == (200_000, 150_000) and layer.n_eigenvalues == 150_000 and layer.update_rank == 16
    expected = np.sort(np.linalg.svd(np.linalg.qr(B.astype(float))[1] @ np.linalg.qr(A.T.astype(float))[1].T,
                                     compute_uv=False) ** 2)
    np.testing.assert_allclose(layer.eigenvalues[-16:], expected, rtol=1e-10)


@pytest.mark.parametrize("config, message", [
    ("[1, 2]", "a PEFT adapter config is a JSON object"),
    ('{"peft_type": "LORA", "r": 0}', "r must be a positive integer"),
    ('{"peft_type": "LORA", "r": 8, "lora_alpha": "x"}', "lora_alpha must be a number"),
    ("{not json", "not a readable PEFT adapter config"),
])
def test_a_bad_adapter_config_is_one_line_exit_2(llama, tmp_path: Path, config: str, message: str) -> None:  # type: ignore[no-untyped-def]
    out, _ = llama
    (tmp_path / "adapter_model.safetensors").write_bytes((out / "adapter" / "adapter_model.safetensors").read_bytes())
    (tmp_path / "adapter_config.json").write_text(config)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        htmp_cli.analyze(tmp_path)
    proc = run_htmp("analyze", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_an_update_whose_base_weight_differs_is_named_as_unpaired(llama, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, _ = llama
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(out / "base" / "model.safetensors"))
    del weights["model.layers.1.self_attn.q_proj.weight"]
    weights["model.layers.0.self_attn.v_proj.weight"] = np.zeros((16, 64), dtype=np.float32)
    save_file(weights, str(tmp_path / "model.safetensors"))
    result = analyze_adapter(out / "adapter", tmp_path / "model.safetensors", AnalysisOptions(), jobs=1)
    unpaired = dict(result.unpaired)
    assert "no weight of that name" in unpaired["model.layers.1.self_attn.q_proj.weight"]
    assert "is 16x64, the update 32x64" in unpaired["model.layers.0.self_attn.v_proj.weight"]
    assert len(result.diff.layers) == 5
