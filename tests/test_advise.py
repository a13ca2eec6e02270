"""htmp advise: the published rules against plain re-derivations of the papers' equations, their
budgets and bounds, the estimators, the plan's statuses, the command, and the optimizer groups."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import htmp_cli
from htmp_cli.advise import advise, param_groups, rules
from htmp_cli.advise.estimators import median_alpha, peak_alpha
from htmp_cli.advise.plan import block_of
from htmp_cli.errors import OptionError
from htmp_cli.integrations.balance import SpectralBalancer

from tests.conftest import run_htmp as run_cli

alphas_st = st.lists(st.floats(1.5, 12.0), min_size=1, max_size=12)


# --- the rules ------------------------------------------------------------------------------------

def test_alpha_pruning_on_numbers_worked_by_hand():
    # ww_sparsity with s1 = 0.7, s2 = 1.3: r = [0.7, 1.0, 1.3]; equal sizes, S = 0.7 -> scaler 0.7.
    sparsities = rules.alpha_pruning(np.array([2.0, 3.0, 4.0]), np.ones(3), 0.7, 0.3)
    assert np.allclose(sparsities, [0.49, 0.70, 0.91], atol=1e-12)
    # Unequal sizes: the scaler is S sum(n) / sum(n r) = 0.5 * 4 / (1 * 0.8 + 3 * 1.2).
    sparsities = rules.alpha_pruning(np.array([2.0, 5.0]), np.array([1.0, 3.0]), 0.5, 0.2)
    assert np.allclose(sparsities, np.array([0.8, 1.2]) * 0.5 * 4 / 4.4, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(alphas_st, st.floats(0.05, 0.95), st.floats(0.0, 0.6), st.data())
def test_alpha_pruning_holds_its_budget_and_bounds(alphas, sparsity, epsilon, data):
    alphas = np.array(alphas)
    sizes = np.array(data.draw(st.lists(st.integers(100, 10**6), min_size=alphas.size, max_size=alphas.size)), float)
    cap = data.draw(st.floats(sparsity, 1.0))
    result = rules.alpha_pruning(alphas, sizes, sparsity, epsilon, cap)
    assert math.isclose((sizes * result).sum() / sizes.sum(), sparsity, rel_tol=1e-9, abs_tol=1e-12)
    assert result.min() >= 0 and result.max() <= cap + 1e-12
    order = np.argsort(alphas, kind="stable")  # a lighter tail is never pruned less
    assert np.all(np.diff(result[order]) >= -1e-12)
    plain = (1 - epsilon + 2 * epsilon * (alphas - alphas.min()) / (alphas.max() - alphas.min())
             if alphas.max() > alphas.min() else np.ones_like(alphas))
    plain = plain * sparsity * sizes.sum() / (sizes * plain).sum()
    if plain.max() <= cap:  # where the cap does not bind, exactly the paper's formula
        assert np.allclose(result, plain, rtol=1e-12, atol=1e-15)


@settings(max_examples=200, deadline=None)
@given(alphas_st, st.floats(0.1, 1.0), st.floats(1.0, 4.0))
def test_linear_map_is_tempbalances_interpolation_within_its_bounds(alphas, low, high):
    alphas = np.array(alphas)
    factors = rules.linear_map(alphas, low, high)
    if alphas.max() > alphas.min():
        assert np.allclose(factors, np.interp(alphas, [alphas.min(), alphas.max()], [low, high]), rtol=1e-12)
    else:
        assert np.all(factors == 1.0)
    assert factors.min() >= min(low, 1.0) - 1e-12 and factors.max() <= max(high, 1.0) + 1e-12


@settings(max_examples=200, deadline=None)
@given(alphas_st, st.integers(1, 400), st.floats(0.0, 4.0), st.integers(1, 3))
def test_alpha_lora_spends_the_total_exactly(alphas, total, power, minimum):
    alphas = np.array(alphas)
    if total < minimum * alphas.size:
        with pytest.raises(OptionError):
            rules.alpha_lora(alphas, total, power, minimum)
        return
    counts = rules.alpha_lora(alphas, total, power, minimum)
    assert counts.sum() == total and counts.min() >= minimum
    ideal = total * alphas**power / (alphas**power).sum()
    if np.all(ideal >= minimum):  # no minimum binds: largest remainders, within one of the ideal
        assert np.all(np.abs(counts - ideal) < 1)


def test_alpha_lora_the_papers_default_160_experts_over_32_layers():
    alphas = np.linspace(2.0, 6.0, 32)
    counts = rules.alpha_lora(alphas, 160, 2.5)
    assert counts.sum() == 160 and np.all(np.diff(counts) >= 0) and counts[0] < counts[-1]


def _brute_force_bits(alphas, variances, sizes, average, widths, gamma):
    s = (np.median(alphas) / alphas) ** gamma
    best, best_cost = None, np.inf
    for choice in itertools.product(widths, repeat=len(alphas)):
        bits = np.array(choice, float)
        if (sizes * bits).sum() / sizes.sum() > average + 1e-12:
            continue
        cost = (sizes * s * variances * 2.0 ** (-2 * bits)).sum()
        if cost < best_cost - 1e-12 * abs(best_cost if np.isfinite(best_cost) else 1):
            best, best_cost = bits, cost
    return best, best_cost


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1.5, 8.0), min_size=2, max_size=5), st.floats(1.0, 4.0), st.data())
def test_alpha_q_is_the_optimum_of_its_program(alphas, average, data):
    alphas = np.array(alphas)
    sizes = np.array(data.draw(st.lists(st.integers(1, 50), min_size=alphas.size, max_size=alphas.size)), float)
    variances = np.array(data.draw(st.lists(st.floats(0.01, 1.0), min_size=alphas.size, max_size=alphas.size)))
    widths = (1, 2, 3, 4)
    bits = rules.alpha_q(alphas, variances, sizes, average, widths)
    assert (sizes * bits).sum() / sizes.sum() <= average + 1e-9
    _, best_cost = _brute_force_bits(alphas, variances, sizes, average, widths, 1.0)
    cost = ((np.median(alphas) / alphas) * sizes * variances * 2.0 ** (-2.0 * bits)).sum()
    assert cost <= best_cost * (1 + 1e-6)


def test_alpha_q_gives_heavier_tails_more_bits():
    alphas = np.array([2.0, 3.0, 4.0, 6.0])
    bits = rules.alpha_q(alphas, np.ones(4), np.ones(4), 2.5, (1, 2, 3, 4))
    assert list(bits) == sorted(bits, reverse=True) and bits.mean() <= 2.5 and bits[0] > bits[-1]


# --- the estimators -------------------------------------------------------------------------------

def _pareto(alpha: float, n: int, seed: int) -> np.ndarray:
    """Eigenvalues with density ~ lambda^-alpha above 1."""
    return np.sort(np.random.default_rng(seed).pareto(alpha - 1.0, n) + 1.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(1e-3, 1e3), min_size=4, max_size=300))
def test_median_alpha_is_tempbalances_formula(values):
    values = np.sort(np.array(values))
    i = len(values) // 2
    n = len(values) - i
    total = np.log(values[i:]).sum() - n * np.log(values[i])
    estimate = median_alpha(values)
    if total > 1e-12 * n:
        assert math.isclose(estimate.alpha, 1 + n / total, rel_tol=1e-7)
        assert estimate.tail_size == n and estimate.xmin == values[i]
    elif estimate.alpha is None:
        assert estimate.reason


def _peak_by_hand(values: np.ndarray) -> float:
    """AlphaPruning's xmin_peak search, written out as the paper describes it, one candidate at a time."""
    logs = np.log10(values)
    counts, edges = np.histogram(logs, bins=100, range=(logs.min(), logs.max()))
    peak = 10 ** edges[np.argmax(counts)]
    best, best_d = None, np.inf
    n_all = len(values)
    for i in range(n_all - 1):
        if not 0.95 * peak <= values[i] <= 1.5 * peak:
            continue
        n = n_all - i
        alpha = 1 + n / (np.log(values[i:]).sum() - n * np.log(values[i]))
        if not alpha > 1:
            continue
        d = np.max(np.abs(1 - (values[i:] / values[i]) ** (1 - alpha) - np.arange(n) / n))
        if d < best_d:
            best, best_d = alpha, d
    return best


@pytest.mark.parametrize("seed", range(4))
def test_peak_alpha_matches_the_search_written_out(seed):
    rng = np.random.default_rng(seed)
    bulk = rng.uniform(0.5, 1.5, 300)
    values = np.sort(np.concatenate([bulk, _pareto(3.0, 200, seed) * 1.5]))
    assert math.isclose(peak_alpha(values).alpha, _peak_by_hand(values), rel_tol=1e-9)


def test_the_estimators_recover_a_pareto_tails_alpha():
    values = _pareto(3.0, 20000, 1)
    assert abs(median_alpha(values).alpha - 3.0) < 0.1
    assert abs(peak_alpha(values).alpha - 3.0) < 0.15


def test_an_estimator_without_a_tail_says_why():
    assert median_alpha(np.ones(10)).reason.startswith("the eigenvalues above the median are all equal")
    assert median_alpha(np.r_[np.zeros(8), 1.0, 2.0], n_zero=8).reason.startswith("the median eigenvalue is numerically zero")
    assert peak_alpha(np.array([1.0])).alpha is None


# --- the plan -------------------------------------------------------------------------------------

def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Four blocks of two layers whose tails get heavier block by block, an embedding, a pooler,
    and a rank-1 layer in block 2 on which every fit fails."""
    rng = np.random.default_rng(seed)
    weights = {"embeddings.word_embeddings.weight": rng.normal(size=(300, 64))}
    for block, dof in enumerate((40.0, 6.0, 3.5, 2.5)):
        for part in ("attention.query", "mlp.up"):
            weights[f"encoder.layer.{block}.{part}.weight"] = rng.standard_t(dof, size=(160, 120)) / 10
    weights["encoder.layer.2.mlp.down.weight"] = np.outer(rng.normal(size=100), rng.normal(size=120))
    weights["pooler.dense.weight"] = rng.normal(size=(120, 120))
    return weights


@pytest.fixture(scope="module")
def report():
    return htmp_cli.analyze(_weights(), htmp=False)


def test_block_names():
    assert block_of("encoder.layer.3.attention.self.query.weight") == "encoder.layer.3"
    assert block_of("model.layers.12.mlp.up_proj.weight") == "model.layers.12"
    assert block_of("pooler.dense.weight") == "pooler.dense"
    assert block_of("0.weight") == "0"  # a top-level index is a module, not a block of a model


def test_pruning_budget_statuses_and_the_neutral_setting(report):
    advice = advise(report, "pruning", sparsity=0.6)
    by = {layer.module: layer for layer in advice.layers}
    assert by["embeddings.word_embeddings"].status == "left out" and by["embeddings.word_embeddings"].value == 0.0
    assert by["pooler.dense"].status == "left out" and "numbered blocks" in by["pooler.dense"].reason
    failed = by["encoder.layer.2.mlp.down"]
    assert failed.status == "neutral" and failed.value == 0.6 and failed.alpha is None and failed.reason
    assert math.isclose(advice.achieved, 0.6, rel_tol=1e-12)
    # block grouping: both layers of a block share the block's mean alpha and sparsity
    for block in range(4):
        pair = [by[f"encoder.layer.{block}.attention.query"], by[f"encoder.layer.{block}.mlp.up"]]
        assert pair[0].value == pair[1].value and pair[0].alpha == pair[1].alpha
        assert math.isclose(pair[0].alpha, (pair[0].layer_alpha + pair[1].layer_alpha) / 2, rel_tol=1e-12)
    # the heaviest tails (block 3) are pruned least
    assert by["encoder.layer.3.mlp.up"].value < by["encoder.layer.0.mlp.up"].value
    layerwise = advise(report, "pruning", grouping="layer")
    assert layerwise.layer("pooler.dense").status == "fitted"
    assert math.isclose(layerwise.achieved, 0.7, rel_tol=1e-12)


def test_lr_factors_leave_out_the_first_and_last_and_stay_in_bounds(report):
    advice = advise(report, "lr", lr=0.1)
    statuses = [layer.status for layer in advice.layers if layer.kind != "embedding"]
    assert statuses[0] == "left out" and statuses[-1] == "left out"
    fitted = [layer for layer in advice.layers if layer.status == "fitted"]
    assert {round(min(l.factor for l in fitted), 12), round(max(l.factor for l in fitted), 12)} == {0.5, 1.5}
    for layer in advice.layers:
        assert math.isclose(layer.value, 0.1 * layer.factor, rel_tol=1e-12)
        if layer.status != "fitted":
            assert layer.factor == 1.0
    order = sorted(fitted, key=lambda l: l.alpha)
    assert [l.factor for l in order] == sorted(l.factor for l in order)  # heavier tail, smaller rate
    decay = advise(report, "weight-decay", weight_decay=1e-4)
    factors = [l.factor for l in decay.layers if l.status == "fitted"]
    assert math.isclose(min(factors), 0.6666) and math.isclose(max(factors), 3.0)


def test_lora_rank_and_bits_budgets(report):
    ranks = advise(report, "lora-rank", total_rank=40)
    assert ranks.achieved == 40 and ranks.settings["total_rank"] == 40
    neutral = ranks.layer("encoder.layer.2.mlp.down")
    assert neutral.status == "neutral" and neutral.value == rules.uniform_share(40, 5)
    mapping = ranks.mapping()
    assert "embeddings.word_embeddings" not in mapping and all(isinstance(v, int) for v in mapping.values())
    bits = advise(report, "bits", average_bits=3.0, estimator="csn")
    assert bits.achieved <= 3.0 + 1e-12 and set(bits.mapping().values()) <= {1, 2, 3, 4}
    assert bits.layer("encoder.layer.2.mlp.down").value == 3


def test_options_are_checked_and_belong_to_their_method(report):
    with pytest.raises(OptionError, match="--sparsity applies to --for pruning, not to --for lr"):
        advise(report, "lr", sparsity=0.5)
    with pytest.raises(OptionError, match="--sparsity must lie in"):
        advise(report, "pruning", sparsity=1.2)
    with pytest.raises(OptionError, match="unknown method"):
        advise(report, "quantise")
    with pytest.raises(OptionError, match="--estimator must be one of"):
        advise(report, "lr", estimator="hill")
    with pytest.raises(OptionError, match="needs FARMS fits"):
        advise(report, "bits")


def test_a_saved_report_advises_with_its_own_alpha(tmp_path, report):
    path = tmp_path / "report.json"
    path.write_text(report.to_json())
    with pytest.raises(OptionError, match="needs the eigenvalues"):
        advise(path, "pruning")
    saved = advise(path, "pruning", estimator="csn")
    assert saved.to_dict()["layers"] == advise(report, "pruning", estimator="csn").to_dict()["layers"]


# --- the command ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("advise") / "model.safetensors"
    save_file({k: v.astype(np.float32) for k, v in _weights().items()}, str(path))
    return path


def test_the_command_gives_json_a_mapping_and_a_table(checkpoint, tmp_path):
    result = run_cli("advise", str(checkpoint), "--for", "pruning", "--sparsity", "0.8", "-f", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "htmp.advice/1" and document["estimator"] == "peak"
    assert math.isclose(document["achieved"], 0.8, rel_tol=1e-9)
    mapping = json.loads(run_cli("advise", str(checkpoint), "--for", "pruning", "--sparsity", "0.8",
                                 "-f", "mapping").stdout)
    assert mapping == {layer["module"]: layer["value"] for layer in document["layers"]}
    table = run_cli("advise", str(checkpoint), "--for", "lr", "--lr", "0.01", "-o", str(tmp_path / "t.txt"))
    assert table.returncode == 0, table.stderr
    text = (tmp_path / "t.txt").read_text()
    assert "TempBalance" in text and "TempBalance leaves out the first layer" in text and "base 0.01" in text
    bits = run_cli("advise", str(checkpoint), "--for", "bits", "--bit-widths", "2,4,8", "-f", "json")
    assert bits.returncode == 0, bits.stderr
    assert json.loads(bits.stdout)["settings"]["bit_widths"] == [2, 4, 8]


@pytest.mark.parametrize("arguments, message", [
    (("--for", "lr", "--sparsity", "0.5"), "--sparsity applies to --for pruning, not to --for lr"),
    (("--for", "bits", "--bit-widths", "2,x"), "--bit-widths '2,x': expected whole numbers"),
    (("--for", "lora-rank", "--total-rank", "3"), "--total-rank 3 leaves 2 for 4 fitted unit(s)"),
])
def test_the_command_refuses_in_one_line(checkpoint, arguments, message):
    result = run_cli("advise", str(checkpoint), *arguments)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- optimizer groups and balancing during training -----------------------------------------------

class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(16, 64, 3)
        self.conv2 = torch.nn.Conv2d(64, 64, 3)
        self.bn2 = torch.nn.BatchNorm2d(64)
        self.fc1 = torch.nn.Linear(64, 96)
        self.fc2 = torch.nn.Linear(96, 80)
        self.head = torch.nn.Linear(80, 10)
        with torch.no_grad():  # tails of different weights, so the factors spread
            self.conv2.weight.copy_(torch.from_numpy(np.random.default_rng(1).standard_t(2.5, (64, 64, 3, 3))) / 30)


def test_param_groups_partition_the_parameters_with_the_advised_rates():
    net = _Net()
    groups = param_groups(net, lr=0.1, weight_decay=1e-3)
    seen = [id(p) for group in groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in net.parameters())  # every parameter exactly once
    advice = advise(net, "lr", lr=0.1)
    by_module = {group["htmp_module"]: group for group in groups}
    for layer in advice.layers:
        assert math.isclose(by_module[layer.module]["lr"], 0.1 * layer.factor, rel_tol=1e-12)
        assert 0.5 <= by_module[layer.module]["htmp_lr_factor"] <= 1.5
    assert by_module["conv2"]["htmp_lr_factor"] != 1.0
    assert by_module["bn2"]["lr"] == by_module["conv2"]["lr"]  # TempBalance's norm rule: bn2 follows conv2
    torch.optim.SGD(groups, lr=0.1)  # torch takes them as they are
    with pytest.raises(OptionError, match="needs lr"):
        param_groups(net)


@pytest.mark.parametrize("schedule", ["cosine", "lambda"])
def test_the_balancer_rescales_the_rates_under_the_schedule(schedule):
    net = _Net()
    optimizer = torch.optim.SGD(param_groups(net, lr=0.1), lr=0.1)
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
        at = lambda t: 0.1 * (1 + math.cos(math.pi * t / 10)) / 2  # noqa: E731
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.9**t)
        at = lambda t: 0.1 * 0.9**t  # noqa: E731
    balancer = SpectralBalancer(net, optimizer, scheduler)
    for step in range(1, 6):
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            net.fc1.weight.mul_(1.0 + 0.3 * torch.rand_like(net.fc1.weight))  # the spectra move
        balancer.step()
        for group in optimizer.param_groups:
            assert math.isclose(group["lr"], at(step) * group["htmp_lr_factor"], rel_tol=1e-9)
    optimizer.step()
    scheduler.step()
    for group in optimizer.param_groups:  # and the schedule carries the factors on
        assert math.isclose(group["lr"], at(6) * group["htmp_lr_factor"], rel_tol=1e-9)


def test_the_balancer_needs_htmp_groups():
    net = _Net()
    with pytest.raises(OptionError, match="param_groups"):
        SpectralBalancer(net, torch.optim.SGD(net.parameters(), lr=0.1))


def test_a_trainer_run_rebalances_every_epoch(tmp_path):
    from torch.utils.data import Dataset
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from htmp_cli.integrations.transformers import BalanceCallback

    class Tokens(Dataset):
        ids = torch.randint(0, 120, (32, 16), generator=torch.Generator().manual_seed(0))

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, k: int) -> dict:
            return {"input_ids": self.ids[k], "labels": self.ids[k, 0] % 2}

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=128,
                                                     max_position_embeddings=32, num_labels=2))
    optimizer = torch.optim.AdamW(param_groups(model, lr=5e-3, weight_decay=0.01))
    initial = {g["htmp_module"]: g["htmp_lr_factor"] for g in optimizer.param_groups}
    callback = BalanceCallback()
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=8,
                             lr_scheduler_type="constant", report_to=[], use_cpu=True, disable_tqdm=True,
                             save_strategy="no", seed=0, dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=Tokens(), optimizers=(optimizer, None),
            callbacks=[callback]).train()
    assert callback.balancer.steps == 3  # TempBalance's cadence: once an epoch
    final = advise(model, "lr", lr=5e-3)
    for group in optimizer.param_groups:
        if group["htmp_module"] is not None:
            assert math.isclose(group["lr"], 5e-3 * group["htmp_lr_factor"], rel_tol=1e-9)
    by_module = {g["htmp_module"]: g for g in optimizer.param_groups}
    for layer in final.layers:
        assert math.isclose(by_module[layer.module]["htmp_lr_factor"], layer.factor, rel_tol=1e-9)
        assert by_module[layer.module]["weight_decay"] == pytest.approx(
            0.01 * callback.balancer.advice["weight-decay"].layer(layer.name).factor)
    assert any(initial[m] != by_module[m]["htmp_lr_factor"] for m in initial if m is not None)


def test_a_lightning_run_rebalances_every_epoch():
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from htmp_cli.integrations.lightning import BalanceCallback

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 80),
                                           torch.nn.ReLU(), torch.nn.Linear(80, 64), torch.nn.ReLU(),
                                           torch.nn.Linear(64, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(param_groups(self, lr=0.2), lr=0.2)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]

    pl.seed_everything(0, verbose=False)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(128, 64, generator=generator), torch.randint(0, 10, (128,), generator=generator))
    callback = BalanceCallback()
    module = Classifier()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, DataLoader(data, batch_size=32))
    assert callback.balancer.steps == 3
    final = advise(module, "lr", lr=1.0)
    groups = {g["htmp_module"]: g for g in trainer.optimizers[0].param_groups}
    for layer in final.layers:
        group = groups[layer.module]
        assert math.isclose(group["htmp_lr_factor"], layer.factor, rel_tol=1e-9)
        assert math.isclose(group["lr"], 0.2 * 0.5**3 * layer.factor, rel_tol=1e-9)


def test_the_advise_guide_runs_as_written(tmp_path):
    """docs/advise.md's Python, as a user would paste it."""
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "advise.md").read_text(), flags=re.S)
    done = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert math.isclose(float(lines[0]), 0.6, rel_tol=1e-9)
    assert "htmp_lr_factor" not in done.stderr and "'4'" in lines[-1]


def test_split_parts_keep_their_own_values_in_the_mapping():
    rng = np.random.default_rng(3)
    weights = {f"h.{k}.attn.c_attn.weight": rng.standard_t(3 + k, size=(64, 192)) for k in range(2)}
    report = htmp_cli.analyze(weights, split_fused=True, htmp=False)
    advice = advise(report, "bits", estimator="csn", average_bits=2.5)
    mapping = advice.mapping()
    assert len(mapping) == 6 and "h.0.attn.c_attn:q" in mapping
    assert mapping == {f"{layer.module}:{layer.name.split(':')[1]}": layer.value for layer in advice.layers}


def test_budgets_hold_when_no_layer_has_a_fit():
    report = htmp_cli.analyze({f"encoder.layer.{k}.w.weight": np.ones((60, 60)) for k in range(3)}, htmp=False)
    ranks = advise(report, "lora-rank", estimator="csn", total_rank=10)
    assert [layer.status for layer in ranks.layers] == ["neutral"] * 3 and ranks.achieved == 10
    bits = advise(report, "bits", estimator="csn", average_bits=3.5)
    assert bits.achieved <= 3.5 and {layer.value for layer in bits.layers} == {3}
    assert all(layer.reason for layer in bits.layers)


def test_a_wrapped_model_gets_its_groups():
    net = torch.nn.DataParallel(_Net())
    groups = param_groups(net, lr=0.1)
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in net.parameters())
    assert "module.conv2" in {g["htmp_module"] for g in groups}


def test_the_balancer_refuses_a_scheduler_that_would_undo_the_factors():
    net = _Net()
    optimizer = torch.optim.SGD(param_groups(net, lr=0.1), lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    with pytest.raises(OptionError, match="cannot rescale a OneCycleLR"):
        SpectralBalancer(net, optimizer, scheduler)


def test_flags_that_cannot_change_the_advice_are_refused(checkpoint):
    result = run_cli("advise", str(checkpoint), "--for", "pruning", "--vectors", "--fit", "ww")
    assert result.returncode == 2
    assert "--vectors, --fit: no effect on the advice with --estimator peak" in result.stderr
