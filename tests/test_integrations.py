"""The training callbacks in real runs: a Hugging Face Trainer and a Lightning Trainer, on CPU.

Each run writes TensorBoard event files and checkpoints; the scalars are read back from the event
files, and the JSON Lines log is compared with `htmp_cli.analyze` on the checkpoints of the same
steps, to the last bit. Early stopping is checked against a run without it: the rule is built to
hold first at a known step, and the run must stop there.
"""

from __future__ import annotations

import math

import pytest

import htmp_cli
from htmp_cli.results import layer_to_dict
from htmp_cli.runlog import read_log

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def _scalars(folder) -> dict[str, dict[int, float]]:
    """Every scalar of the TensorBoard event files under `folder`: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, float]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return found


def _same_layers(logged, report) -> None:
    def plain(layer):
        data = layer_to_dict(layer)
        data.pop("timings")
        return data

    assert sorted(layer.name for layer in logged.layers) == sorted(layer.name for layer in report.layers)
    for layer in report.layers:
        assert plain(logged.layer(layer.name)) == plain(layer)


def _stop_rule(run, figure: str) -> tuple[int, dict]:
    """A rule on a summary mean that first holds at a known step, near the middle of the run: the
    mean falls below (or rises above) every earlier value there, and the bound lies in between."""
    values = [(s.step, _summary_value(s, figure)) for s in run.steps]
    candidates = []
    for k in range(1, len(values)):
        step, value = values[k]
        lowest, highest = min(v for _, v in values[:k]), max(v for _, v in values[:k])
        if value < lowest:
            candidates.append((abs(k - len(values) / 2), step, {"min": (lowest + value) / 2}))
        elif value > highest:
            candidates.append((abs(k - len(values) / 2), step, {"max": (highest + value) / 2}))
    if not candidates:
        pytest.fail(f"mean {figure} never left the range of its earlier values: {values}")
    _, step, bound = min(candidates, key=lambda c: c[0])
    return step, {"name": f"{figure}-moved", "summary": f"mean_{figure}", **bound}


def _summary_value(logged_step, figure: str) -> float:
    from htmp_cli.summary import summarize

    return summarize(logged_step.layers, (), {}, 1).means[figure]


# --- Hugging Face Trainer -------------------------------------------------------------------------

def _hf_trainer(tmp_path, steps: int, evaluate_every: int | None = None, **callback):
    from torch.utils.data import Dataset
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from htmp_cli.integrations.transformers import HTMPCallback

    class Tokens(Dataset):
        def __init__(self) -> None:
            generator = torch.Generator().manual_seed(0)
            self.ids = torch.randint(0, 120, (64, 16), generator=generator)
            self.labels = (self.ids[:, 0] % 2).long()

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, k: int) -> dict:
            return {"input_ids": self.ids[k], "labels": self.labels[k]}

    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=8,
                             learning_rate=5e-3, logging_steps=5, save_steps=10, save_strategy="steps",
                             report_to=["tensorboard"], use_cpu=True,
                             disable_tqdm=True, seed=0, data_seed=0, dataloader_num_workers=0,
                             **({"eval_strategy": "steps", "eval_steps": evaluate_every} if evaluate_every else {}))
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), eval_dataset=Tokens() if evaluate_every else None)
    htmp = HTMPCallback(trainer, **callback)
    trainer.add_callback(htmp)
    return trainer, htmp


def test_a_trainer_run_logs_scalars_to_tensorboard_and_records_match_its_checkpoints(tmp_path, capsys):
    trainer, htmp = _hf_trainer(tmp_path, 30, every=10)
    trainer.train()
    # The Trainer's own logging is as without the callback (its loss at every logging step, 5 here,
    # those the analyses fall on too), and nothing of htmp's is printed.
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [5, 10, 15, 20, 25, 30]
    assert "htmp/" not in capsys.readouterr().out
    run = read_log(tmp_path / "out" / "htmp.jsonl")
    assert [s.step for s in run.steps] == [10, 20, 30]
    for logged in run.steps:
        _same_layers(logged, htmp_cli.analyze(tmp_path / "out" / f"checkpoint-{logged.step}" / "model.safetensors"))
    scalars = _scalars(tmp_path / "out" / "runs")  # the Trainer's TensorBoard folder
    means = scalars["train/htmp/mean_alpha"]
    assert sorted(means) == [10, 20, 30]
    for logged in run.steps:
        assert math.isclose(means[logged.step], _summary_value(logged, "alpha"), rel_tol=1e-6)  # TB stores float32
        layer = logged.layers[0]
        assert math.isclose(scalars[f"train/htmp/alpha/{layer.name}"][logged.step], layer.alpha, rel_tol=1e-6)
    assert "train/loss" in scalars  # the trainer's own logging goes on as before


def test_a_trainer_run_can_be_analysed_at_each_save_and_each_evaluation(tmp_path):
    trainer, _ = _hf_trainer(tmp_path, 20, evaluate_every=5, every=None, at_save=True, at_evaluate=True)
    trainer.train()
    # Evaluations at 5, 10, 15, 20, saves at 10 and 20: each step analysed once.
    log = tmp_path / "out" / "htmp.jsonl"
    assert [s.step for s in read_log(log).steps] == [5, 10, 15, 20]
    assert len(log.read_text().splitlines()) == 1 + 4 * len(read_log(log).steps[0].layers)
    trainer.evaluate()  # after training: the run's monitor is closed, the event is let pass
    assert [s.step for s in read_log(log).steps] == [5, 10, 15, 20]


def test_a_trainer_run_stops_at_the_step_where_the_rule_first_holds(tmp_path):
    trainer, _ = _hf_trainer(tmp_path / "free", 40, every=5)
    trainer.train()
    step, rule = _stop_rule(read_log(tmp_path / "free" / "out" / "htmp.jsonl"), "stable_rank")
    trainer, htmp = _hf_trainer(tmp_path / "stopped", 40, every=5, stop_on=[rule])
    trainer.train()
    assert trainer.state.global_step == step
    assert read_log(tmp_path / "stopped" / "out" / "htmp.jsonl").steps[-1].step == step
    assert htmp.monitor.stop_reason.violation.rule.name == "stable_rank-moved"


# --- Lightning ------------------------------------------------------------------------------------

def _lightning_trainer(tmp_path, steps: int, **callback):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    from htmp_cli.integrations.lightning import HTMPCallback

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(24, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32),
                                           torch.nn.ReLU(), torch.nn.Linear(32, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.3)

    pl.seed_everything(0, verbose=False)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(320, 24, generator=generator), torch.randint(0, 10, (320,), generator=generator))
    htmp = HTMPCallback(**callback)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=10, save_top_k=-1)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path, name="tb"),
                         callbacks=[htmp, checkpoints], enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=5, num_sanity_val_steps=0)
    return trainer, Classifier(), DataLoader(data, batch_size=16, shuffle=False), htmp


def test_a_lightning_run_logs_scalars_to_tensorboard_and_records_match_its_checkpoints(tmp_path):
    trainer, module, loader, htmp = _lightning_trainer(tmp_path, 30, every=10)
    trainer.fit(module, loader)
    run = read_log(htmp.monitor.log_path)
    assert [s.step for s in run.steps] == [10, 20, 30]
    saved = {int(path.stem.split("step=")[1]): path for path in (tmp_path / "ckpt").glob("*.ckpt")}
    assert sorted(saved) == [10, 20, 30]
    for logged in run.steps:
        _same_layers(logged, htmp_cli.analyze(saved[logged.step]))
    scalars = _scalars(tmp_path / "tb")
    for logged in run.steps:
        assert math.isclose(scalars["htmp/mean_alpha"][logged.step], _summary_value(logged, "alpha"), rel_tol=1e-6)
        assert math.isclose(scalars["htmp/kappa/net.2.weight"][logged.step], logged.layer("net.2.weight").kappa,
                            rel_tol=1e-6)


def test_a_lightning_run_stops_at_the_step_where_the_rule_first_holds(tmp_path):
    trainer, module, loader, htmp = _lightning_trainer(tmp_path / "free", 40, every=5)
    trainer.fit(module, loader)
    step, rule = _stop_rule(read_log(htmp.monitor.log_path), "stable_rank")
    trainer, module, loader, htmp = _lightning_trainer(tmp_path / "stopped", 40, every=5, stop_on=[rule])
    trainer.fit(module, loader)
    assert trainer.global_step == step
    assert read_log(htmp.monitor.log_path).steps[-1].step == step
