"""Do smaller batches give heavier tails (smaller kappa)? An MLP trained on scikit-learn's digits at
several batch sizes and learning rates, several seeds each, with htmp_cli.Monitor on.

    python benchmarks/batch_size_study.py [--epochs 60] [--seeds 3] [--control-steps 1380]

Each run trains the same 64-256-256-256-10 ReLU network with plain SGD (no momentum, no weight
decay) for a fixed number of epochs, analysing it at 11 evenly spaced epochs (0 included). With
fixed epochs a smaller batch also takes more steps, so a control series trains every batch size
for the same number of steps (at the larger learning rate). It
writes one JSON Lines log per run, `runs.json` (settings, test accuracy, final per-layer numbers),
prints Markdown tables (the final kappa, alpha and phases by batch size and learning rate, as
means and spreads over the seeds), and draws docs/img/training-kappa.png (mean kappa of the hidden
256 x 256 layers against epoch) and docs/img/training-phases.png (the phase of each layer at each
analysis, for one seed). Seeded and single-threaded: a rerun gives the same numbers on the same
machine. About 12 minutes on one core with the defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import htmp_cli
from htmp_cli.runlog import read_log

HIDDEN = ("2.weight", "4.weight")  # the square 256 x 256 layers
BATCHES = (16, 64, 256, 1024)
RATES = (0.05, 0.2)


@dataclass(frozen=True)
class Setting:
    batch_size: int
    learning_rate: float
    seed: int


def train(setting: Setting, log: Path, epochs: int | None = None, steps: int | None = None) -> dict:
    """Train for `epochs` (analysed at 11 evenly spaced epochs) or for `steps` optimizer steps
    (analysed at 11 evenly spaced steps), from step 0."""
    torch.manual_seed(setting.seed)
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(X, digits.target, test_size=0.2, random_state=0)
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=setting.learning_rate)
    generator = torch.Generator().manual_seed(setting.seed)
    at_epochs = {round(k * epochs / 10) for k in range(11)} if epochs is not None else set()
    at_steps = {round(k * steps / 10) for k in range(11)} if steps is not None else set()
    step, epoch = 0, 0
    log.unlink(missing_ok=True)
    with htmp_cli.Monitor(model, log=log) as monitor:
        monitor.analyze(0)
        while (epochs is not None and epoch < epochs) or (steps is not None and step < steps):
            epoch += 1
            order = torch.randperm(len(x_train), generator=generator)
            for start in range(0, len(order), setting.batch_size):
                batch = order[start : start + setting.batch_size]
                loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step in at_steps:
                    monitor.analyze(step)
                if steps is not None and step >= steps:
                    break
            if epoch in at_epochs:
                monitor.analyze(step)
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    final = read_log(log).steps[-1]
    return {**asdict(setting), "steps": step, "epochs": epoch, "test_accuracy": accuracy,
            "final": {layer.name: {"alpha": layer.alpha, "kappa": layer.kappa, "kappa_orientation": layer.kappa_orientation,
                                   "phase": layer.phase.phase if layer.phase else None} for layer in final.layers}}


def mean_hidden_kappa(logged_step) -> float:
    return statistics.fmean(logged_step.layer(name).kappa for name in HIDDEN)


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def tables(runs: list[dict]) -> None:
    print("| batch | lr | steps | epochs | test accuracy | kappa 2.weight | kappa 4.weight | alpha 2.weight | alpha 4.weight | phases of 0/2/4/6 (seed 0) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch in BATCHES:
        for rate in RATES:
            group = [r for r in runs if r["batch_size"] == batch and r["learning_rate"] == rate]
            if not group:
                continue
            cell = {key: spread([r["final"][name][metric] for r in group])
                    for key, (name, metric) in {"k2": ("2.weight", "kappa"), "k4": ("4.weight", "kappa"),
                                                "a2": ("2.weight", "alpha"), "a4": ("4.weight", "alpha")}.items()}
            phases = "/".join(str(group[0]["final"][f"{k}.weight"]["phase"]) for k in (0, 2, 4, 6))
            print(f"| {batch} | {rate} | {group[0]['steps']} | {group[0]['epochs']} | {spread([r['test_accuracy'] for r in group])} | "
                  f"{cell['k2']} | {cell['k4']} | {cell['a2']} | {cell['a4']} | {phases} |")


def figures(runs: list[dict], control: list[dict], out: Path, image_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a script of its own: no caller's backend to keep
    import matplotlib.pyplot as plt

    panels = [(f"fixed epochs, learning rate {rate}", [r for r in runs if r["learning_rate"] == rate], "epochs")
              for rate in RATES]
    if control:
        panels.append((f"equal steps ({control[0]['steps']}), learning rate {RATES[-1]}", control, "steps"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.9), sharey=True)
    colours = dict(zip(BATCHES, ("#1b9e77", "#d95f02", "#7570b3", "#e7298a")))
    for axis, (title, chosen, series) in zip(np.atleast_1d(axes), panels):
        for r in chosen:
            run = read_log(out / run_name(r, series))
            x = [s.step * r["epochs"] / r["steps"] for s in run.steps] if series == "epochs" else [s.step for s in run.steps]
            axis.plot(x, [mean_hidden_kappa(s) for s in run.steps], color=colours[r["batch_size"]], alpha=0.8,
                      label=f"batch {r['batch_size']}" if r["seed"] == 0 else None)
        axis.set_yscale("log")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch" if series == "epochs" else "step")
        axis.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("kappa, mean of the 256 x 256 layers")
    np.atleast_1d(axes)[-1].legend()
    figure.suptitle("HTMP kappa while training (smaller: heavier tail); one line per seed")
    figure.tight_layout()
    figure.savefig(image_dir / "training-kappa.png", dpi=100)
    plt.close(figure)

    phases = ("random-like", "bleeding-out", "bulk+spikes", "bulk-decay", "heavy-tailed", "rank-collapse", "unclassified")
    colour_of = dict(zip(phases, ("#bdbdbd", "#9ecae1", "#3182bd", "#fd8d3c", "#e6550d", "#756bb1", "#ffffff")))
    chosen = [r for r in runs if r["seed"] == 0 and r["learning_rate"] == RATES[-1]]
    figure, axes = plt.subplots(1, len(chosen), figsize=(2.6 * len(chosen), 2.6), sharey=True)
    for axis, r in zip(np.atleast_1d(axes), chosen):
        run = read_log(out / run_name(r))
        names = [layer.name for layer in run.steps[0].layers]
        for x, logged in enumerate(run.steps):
            for y, name in enumerate(names):
                layer = logged.layer(name)
                axis.add_patch(plt.Rectangle((x, y), 1, 1, color=colour_of[layer.phase.phase if layer.phase else "unclassified"]))
        axis.set_xlim(0, len(run.steps))
        axis.set_ylim(0, len(names))
        axis.set_yticks(np.arange(len(names)) + 0.5, names)
        axis.set_xticks([0.5, len(run.steps) - 0.5], ["0", str(r["epochs"])])
        axis.set_xlabel("epoch")
        axis.set_title(f"batch {r['batch_size']}")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=colour_of[p], edgecolor="#888888") for p in phases]
    figure.legend(handles, phases, loc="lower center", ncol=7, fontsize=7, frameon=False)
    figure.suptitle(f"phase of each layer at each analysis (learning rate {RATES[-1]}, seed 0)", fontsize=9)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(image_dir / "training-phases.png", dpi=110)
    plt.close(figure)


def run_name(r: dict, series: str = "epochs") -> str:
    return f"{'steps-' if series == 'steps' else ''}b{r['batch_size']}-lr{r['learning_rate']}-s{r['seed']}.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--control-steps", type=int, default=1380,
                        help="the equal-steps control: every batch size trained for this many steps at the larger rate")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/_data/batch_study"))
    parser.add_argument("--images", type=Path, default=Path("docs/img"))
    parser.add_argument("--figures-only", action="store_true", help="redraw the figures from OUT/runs.json")
    args = parser.parse_args()
    if args.figures_only:
        saved = json.loads((args.out / "runs.json").read_text())
        figures(saved["epochs"], saved["equal_steps"], args.out, args.images)
        return
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    runs, control = [], []
    started = time.perf_counter()

    def said(run: dict, series: str) -> None:
        print(f"{series:6s} batch {run['batch_size']:5d} lr {run['learning_rate']:<5} seed {run['seed']}: "
              f"{run['steps']:5d} steps, {run['epochs']:4d} epochs, test accuracy {run['test_accuracy']:.3f}, kappa "
              f"{run['final']['2.weight']['kappa']:.3g} / {run['final']['4.weight']['kappa']:.3g} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    for batch in BATCHES:
        for rate in RATES:
            for seed in range(args.seeds):
                setting = Setting(batch, rate, seed)
                runs.append(train(setting, args.out / run_name(asdict(setting)), epochs=args.epochs))
                said(runs[-1], "epochs")
    for batch in BATCHES:
        for seed in range(args.seeds):
            setting = Setting(batch, RATES[-1], seed)
            control.append(train(setting, args.out / run_name(asdict(setting), "steps"), steps=args.control_steps))
            said(control[-1], "steps")
    (args.out / "runs.json").write_text(json.dumps({"epochs": runs, "equal_steps": control}, indent=1))
    print(f"\nFixed epochs ({args.epochs}):\n")
    tables(runs)
    print(f"\nEqual steps ({args.control_steps}, learning rate {RATES[-1]}):\n")
    tables(control)
    figures(runs, control, args.out, args.images)


if __name__ == "__main__":
    main()
