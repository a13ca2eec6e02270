"""`htmp trajectory` and htmp_cli.trajectory: a run's log or step checkpoints read as one trajectory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import htmp_cli
from htmp_cli.errors import HtmpError
from htmp_cli.results import layer_to_dict
from htmp_cli.trajectory import find_checkpoints, from_log, step_of
from conftest import run_htmp

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _train_and_save(folder: Path, steps: int = 30, every: int = 10, name: str = "model_step{step}.safetensors"):
    """A small MLP trained with SGD; the Monitor logs every `every` steps and the same weights are saved."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48), torch.nn.ReLU(),
                                torch.nn.Linear(48, 12))
    generator = torch.Generator().manual_seed(1)
    X, y = torch.randn(256, 32, generator=generator), torch.randint(0, 12, (256,), generator=generator)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder.parent / f"{folder.name}.jsonl"
    with htmp_cli.Monitor(model, every=every, log=log) as monitor:
        monitor.analyze(0)
        (folder / name.format(step=0)).parent.mkdir(parents=True, exist_ok=True)
        safetensors_torch.save_file(model.state_dict(), str(folder / name.format(step=0)))
        for step in range(1, steps + 1):
            loss = torch.nn.functional.cross_entropy(model(X), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            monitor.step(step)
            if step % every == 0:
                target = folder / name.format(step=step)
                target.parent.mkdir(parents=True, exist_ok=True)
                safetensors_torch.save_file(model.state_dict(), str(target))
    return log


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("run")
    log = _train_and_save(root / "ckpt")
    return log, root / "ckpt"


def test_a_log_and_the_checkpoints_of_the_same_steps_give_the_same_trajectory(run, tmp_path):
    log, folder = run
    done = run_htmp("trajectory", str(folder), "--db", str(tmp_path / "s.sqlite"), "-f", "json", "--no-progress")
    assert done.returncode == 0, done.stderr
    from_files = json.loads(done.stdout)
    done = run_htmp("trajectory", str(log), "-f", "json")
    assert done.returncode == 0, done.stderr
    from_records = json.loads(done.stdout)
    assert from_files["steps"] == from_records["steps"] == [0, 10, 20, 30]
    for key in ("summary", "transitions", "never_left_random_like", "rules", "layers"):
        assert from_files[key] == from_records[key], key
    logged = from_log(log)
    for run_step in logged.steps:
        saved = htmp_cli.analyze(folder / f"model_step{run_step.step}.safetensors")
        for layer in saved.layers:
            a, b = layer_to_dict(layer), layer_to_dict(run_step.report.layer(layer.name))
            a.pop("timings"), b.pop("timings")
            assert a == b


def test_the_text_says_transitions_rules_and_means_per_step(run):
    from htmp_cli.gate import DEFAULT_RULES

    log, _ = run
    done = run_htmp("trajectory", str(log), env={"COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "4 analysed steps, 0 to 30; 3 layers (a training log)" in out
    assert "Summary per step" in out and "Rules over the run" in out
    trajectory = from_log(log)
    transitions = trajectory.transitions()
    assert transitions and all(f"{t.since} -> {t.step}" in out for t in transitions)
    random_like = next(s for s in trajectory.rule_spans(DEFAULT_RULES) if s.rule.name == "random-like")
    assert random_like.first_broken == 0  # the initial weights are random
    row = next(line for line in out.splitlines() if line.strip().startswith("random-like "))
    assert f" {random_like.first_broken} " in row and f"{random_like.broken_at} of 4" in row


def test_a_rerun_and_a_later_scan_reuse_the_stored_results(run, tmp_path):
    _, folder = run
    db = tmp_path / "s.sqlite"
    first = run_htmp("trajectory", str(folder), "--db", str(db), "--no-progress")
    assert first.returncode == 0, first.stderr
    again = run_htmp("trajectory", str(folder), "--db", str(db), "--no-progress", "-f", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["steps"] == [0, 10, 20, 30]
    scan = run_htmp("scan", str(folder), "--db", str(db), "--no-progress")
    assert scan.returncode == 0, scan.stderr
    assert "0 analysed now" in scan.stdout and "4 taken from the store" in scan.stdout


def test_plots_are_written_as_png_and_svg(run, tmp_path):
    log, _ = run
    for suffix in (".png", ".svg"):
        target = tmp_path / f"run{suffix}"
        done = run_htmp("trajectory", str(log), "--plot", str(target))
        assert done.returncode == 0, done.stderr
        assert target.stat().st_size > 1000 and (tmp_path / f"run-phases{suffix}").stat().st_size > 1000
    done = run_htmp("trajectory", str(log), "--plot", str(tmp_path / "run.pdf"))
    assert done.returncode == 2 and "--plot" in done.stderr and "must end in .png or .svg" in done.stderr


@pytest.mark.parametrize("name, step", [
    ("out/checkpoint-1500", 1500), ("logs/epoch=3-step=1200.ckpt", 1200), ("model_step_40.safetensors", 40),
    ("iter-0007.pt", 7), ("weights-2024-final-300.bin", 300), ("last.ckpt", None),
    ("resnet50_lr0.1_step100.pt", 100), ("model.step_1000.pt", 1000), ("gpt2.step1000.pt", 1000),
    ("model-epoch=02-val_loss=0.72.ckpt", 2),
    ("model-00001-of-00002.safetensors", None), ("model.v1.5.safetensors", None), ("run-00003-of-00004.safetensors", None),
])
def test_hugging_face_and_lightning_names_give_their_steps(name, step):
    assert step_of(Path(name)) == step


def test_a_file_without_a_step_takes_its_folders(tmp_path):
    for step in (10, 20):
        (tmp_path / "run" / f"checkpoint-{step}").mkdir(parents=True)
        safetensors_torch.save_file({"w": torch.randn(20, 12)}, str(tmp_path / "run" / f"checkpoint-{step}" /
                                                                     "adapter_model.safetensors"))
    assert [step for step, _ in find_checkpoints(tmp_path / "run").checkpoints] == [10, 20]


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["checkpoint-{}", "epoch=2-step={}.ckpt",
                                                                   "model_{}.safetensors", "run3-step{}.pt"]))
def test_a_step_written_into_a_name_is_read_back(step, pattern):
    assert step_of(Path(pattern.format(step))) == step


def test_a_trainer_folder_of_checkpoint_folders_is_a_run(tmp_path):
    log = _train_and_save(tmp_path / "out", steps=20, name="checkpoint-{step}/model.safetensors")
    assert log.exists()
    (tmp_path / "out" / "checkpoint-10" / "optimizer.pt").write_bytes(b"not looked at")
    found = find_checkpoints(tmp_path / "out")
    assert [step for step, _ in found.checkpoints] == [0, 10, 20]
    assert found.skipped == ()


def test_checkpoints_without_a_step_are_said_and_two_of_one_step_refused(run, tmp_path):
    _, folder = run
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("model_step10.safetensors", "model_step20.safetensors"):
        (mixed / name).write_bytes((folder / name).read_bytes())
    (mixed / "last.safetensors").write_bytes((folder / "model_step20.safetensors").read_bytes())
    done = run_htmp("trajectory", str(mixed), "--db", str(tmp_path / "s.sqlite"), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "left out:" in done.stdout and "last.safetensors: no step in its name" in done.stdout
    (mixed / "other_10.safetensors").write_bytes((folder / "model_step10.safetensors").read_bytes())
    with pytest.raises(HtmpError, match="two checkpoints named for step 10"):
        find_checkpoints(mixed)


def test_bad_runs_are_one_line_errors(run, tmp_path):
    log, _ = run
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    cases = [
        (["trajectory", str(tmp_path / "missing")], "no such file or directory"),
        (["trajectory", str(tmp_path / "notes.txt")], "neither a training log"),
        (["trajectory", str(log), "--min-dim", "3"], "is a training log, analysed as it was recorded"),
        (["trajectory", str(tmp_path / "empty")], "no checkpoints found"),
    ]
    for arguments, message in cases:
        done = run_htmp(*arguments)
        assert done.returncode == 2, (arguments, done.stdout, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


_RUN_RULES = """
[[check.rules]]
name = "no-bulk-decay-ever"
forbid_phases = ["bulk-decay"]
steps = "any"

[[check.rules]]
name = "random-at-the-end"
forbid_phases = ["random-like"]

[[check.trend]]
name = "alpha-falls"
summary = "mean_alpha"
direction = "falling"

[[check.trend]]
name = "kappa-rises"
metric = "kappa"
direction = "rising"
layers = "^2\\\\."
"""


def test_check_judges_a_run_at_its_last_step_at_any_step_and_by_its_trends(run, tmp_path):
    from htmp_cli.gate import DEFAULT_RULES, parse_config
    from htmp_cli.trajectory_check import evaluate_run

    log, folder = run
    (tmp_path / "htmp.toml").write_text(_RUN_RULES)
    trajectory = from_log(log)
    config = parse_config(__import__("tomllib").loads(_RUN_RULES), "htmp.toml")
    verdict = evaluate_run(trajectory, config.rules, config.trend_rules)
    fired = {v.rule.name for v in verdict.violations}
    first, last = trajectory.steps[0].report.summary, trajectory.steps[-1].report.summary
    assert ("alpha-falls" in fired) == (last.means["alpha"] > first.means["alpha"])
    kappas = [v for _, v in trajectory.series("2.weight", "kappa")]
    assert ("kappa-rises" in fired) == (kappas[-1] < kappas[0])
    # The built-in random-like rule judges the last step: step 0 (random weights) does not count.
    from htmp_cli.gate import evaluate

    random_like = next(r for r in DEFAULT_RULES if r.name == "random-like")
    at_the_end = {v.layer for v in evaluate(trajectory.steps[-1].report, (random_like,)).violations}
    at_the_start = {v.layer for v in evaluate(trajectory.steps[0].report, (random_like,)).violations}
    assert at_the_start - at_the_end  # some layer was random-like at first and is not at the end
    assert {v.layer for v in verdict.violations if v.rule.name == "random-like"} == at_the_end
    decayed = [s.step for s in trajectory.steps for layer in s.report.layers if layer.phase.phase == "bulk-decay"]
    assert ("no-bulk-decay-ever" in fired) == bool(decayed)
    assert {r.name for r in verdict.rules} >= {r.name for r in DEFAULT_RULES}
    for source in (log, folder):
        done = run_htmp("check", str(source), "--db", str(tmp_path / "s.sqlite"), cwd=tmp_path)
        assert done.returncode == (1 if verdict.errors else 0), done.stdout + done.stderr
        assert "4 steps, 0 to 30" in done.stdout and "kappa-rises" in done.stdout


def test_check_of_a_run_refuses_a_baseline_and_bad_trend_rules(run, tmp_path):
    log, _ = run
    report = tmp_path / "r.json"
    htmp_cli.analyze(torch.randn(40, 30).numpy()).to_json(report)
    done = run_htmp("check", str(log), "--baseline", str(report), cwd=tmp_path)
    assert done.returncode == 2 and "is a training run" in done.stderr
    (tmp_path / "htmp.toml").write_text('[[check.trend]]\nname = "x"\nsummary = "mean_alpha"\ndirection = "down"\n')
    done = run_htmp("check", str(log), cwd=tmp_path)
    assert done.returncode == 2 and "direction must be falling or rising" in done.stderr
    (tmp_path / "htmp.toml").write_text('[[check.trend]]\nname = "x"\nsummary = "mean_alpha"\ndirection = "falling"\n')
    done = run_htmp("check", str(report), cwd=tmp_path)
    assert "trend rule(s) apply to training runs" in done.stderr


def test_the_run_report_shows_its_figures_and_sorts_its_steps_in_a_real_browser(run, tmp_path):
    from browser import Browser

    log, folder = run
    page = tmp_path / "run.html"
    done = run_htmp("report", str(log), "-o", str(page))
    assert done.returncode == 0, done.stderr
    assert "a run of 4 steps" in done.stdout
    done = run_htmp("report", str(folder), "-o", str(tmp_path / "folder.html"), "--db", str(tmp_path / "s.sqlite"),
                    "--no-progress")
    assert done.returncode == 0, done.stderr
    with Browser(tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        assert browser.evaluate("document.querySelectorAll('#steps tbody tr').length") == 4
        for figure in ("#run-metrics svg", "#run-phases svg"):
            box = browser.evaluate(f"(() => {{ const b = document.querySelector('{figure}').getBoundingClientRect(); "
                                   "return [b.width, b.height]; })()")
            assert min(box) > 100, (figure, box)
        phases_text = browser.evaluate("document.querySelector('#run-phases svg').textContent")
        assert "2.weight" in phases_text and "step" in phases_text
        read = "Array.from(document.querySelectorAll('#steps tbody tr td:nth-child(1)')).map(td => Number(td.textContent))"
        browser.evaluate("document.querySelector('#steps th[data-key=step]').click()")
        first = browser.evaluate(read)
        browser.evaluate("document.querySelector('#steps th[data-key=step]').click()")
        assert sorted(first) == [0, 10, 20, 30] and browser.evaluate(read) == sorted(first, reverse=first[0] < first[-1])
        ids = browser.evaluate("""(() => { const seen = {};
          document.querySelectorAll('[id]').forEach(e => { seen[e.id] = (seen[e.id] || 0) + 1; });
          return Object.keys(seen).filter(k => seen[k] > 1); })()""")
        assert ids == []
        assert browser.problems() == []


@pytest.mark.parametrize("n_layers", [12, 100])
def test_the_figures_stay_legible_for_12_and_for_100_layers(run, n_layers):
    """A synthetic run of n layers (one real layer renamed, its phase varied): the phase map keeps
    its row labels apart and within the figure, at a readable size, and the metrics figure draws
    every layer."""
    from dataclasses import replace

    from htmp_cli.report.plots import draw
    from htmp_cli.report.trajectory_plots import metrics_figure, phase_map_figure
    from htmp_cli.trajectory import RunStep, Trajectory

    log, _ = run
    base = from_log(log)
    template = base.steps[-1].report.layers[1]
    phases = ["random-like", "bulk+spikes", "bulk-decay", "heavy-tailed"]
    steps = []
    for k, run_step in enumerate(base.steps):
        layers = tuple(replace(template, name=f"encoder.layer.{i // 2}.{'attention.q' if i % 2 else 'mlp.fc1'}.weight",
                               phase=replace(template.phase, phase=phases[(i + k) % 4])) for i in range(n_layers))
        steps.append(RunStep(run_step.step, replace(run_step.report, layers=layers)))
    trajectory = Trajectory(source=Path("synthetic.jsonl"), kind="log", steps=tuple(steps))
    figure = phase_map_figure(trajectory)
    draw(figure)
    width, height = figure.get_size_inches()
    assert height <= 14 and width <= 14
    ax = figure.axes[0]
    labels = [t for t in ax.get_yticklabels() if t.get_text()]
    assert 12 <= len(labels) <= 60 and all(t.get_fontsize() >= 5 for t in labels)
    renderer = figure.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert all(a.y1 <= b.y0 + 0.5 or b.y1 <= a.y0 + 0.5 for a, b in zip(boxes, boxes[1:])), "row labels overlap"
    figure_box = figure.bbox
    assert all(b.x0 >= 0 and b.y0 >= 0 and b.y1 <= figure_box.y1 for b in boxes), "row labels leave the figure"
    metrics = metrics_figure(trajectory)
    assert {ax.get_title() for ax in metrics.axes if ax.get_title()} == {f"attention ({n_layers // 2} layers)",
                                                                         f"MLP ({n_layers // 2} layers)"}
    assert len(metrics.axes[0].lines) == n_layers // 2 + 2  # each layer, the median, the alpha = 2 line


def test_a_transition_across_a_failed_step_is_from_the_last_known_phase(run):
    from dataclasses import replace

    from htmp_cli.trajectory import RunStep, Trajectory

    log, _ = run
    base = from_log(log)
    template = base.steps[-1].report.layers[1]
    phases = ["random-like", None, "bulk+spikes"]  # None: the analysis failed at that step
    steps = []
    for run_step, phase in zip(base.steps, phases):
        layer = (replace(template, status="failed", phase=None, reason="NaN") if phase is None
                 else replace(template, phase=replace(template.phase, phase=phase)))
        steps.append(RunStep(run_step.step, replace(run_step.report, layers=(layer,))))
    trajectory = Trajectory(source=Path("x.jsonl"), kind="log", steps=tuple(steps))
    (transition,) = trajectory.transitions()
    assert (transition.since, transition.step, transition.before, transition.after) == (
        base.steps[0].step, base.steps[2].step, "random-like", "bulk+spikes")


def test_a_folder_that_is_one_checkpoint_is_checked_as_one(tmp_path):
    for name in ("weights_v2.safetensors", "adapter_model.safetensors"):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        safetensors_torch.save_file({"w": torch.randn(60, 40)}, str(folder / name))
        done = run_htmp("check", str(folder), cwd=tmp_path)
        assert done.returncode in (0, 1), done.stderr
        assert "steps," not in done.stdout and name in done.stdout, done.stdout


def test_rule_names_are_whole_in_a_100_column_terminal(run):
    import io

    from rich.console import Console

    from htmp_cli.gate import DEFAULT_RULES
    from htmp_cli.trajectory_output import render_trajectory

    log, _ = run
    trajectory = from_log(log)
    console = Console(file=io.StringIO(), width=100, color_system=None)
    render_trajectory(trajectory, trajectory.rule_spans(DEFAULT_RULES), console)
    rules = console.file.getvalue().split("Rules over the run")[1]
    assert "mostly-very-heavy-tailed" in rules and "…" not in rules
