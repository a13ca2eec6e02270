"""A run's figures: each metric against step, by layer group, and a map of layers x steps by phase.

Layers are grouped by what their names and kinds say (attention, MLP, embeddings, conv, output
head, other); in each group every layer is a thin line and the group's median a thick one, so the
figure reads the same for 12 layers and for 100.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from htmp_cli.report.plots import FAILED_STYLE, PHASE_STYLE, figure_style, new_figure, save, svg_markup
from htmp_cli.results import LayerResult
from htmp_cli.trajectory import Trajectory

GROUPS = ("attention", "MLP", "embeddings", "conv", "output head", "other")
_ATTENTION = re.compile(r"attn|attention|query|key|value|qkv|(^|[._])[qkvo]_?proj|(^|[._])(wq|wk|wv|wo)([._]|$)",
                        re.IGNORECASE)
_MLP = re.compile(r"mlp|ffn|feed_?forward|intermediate|(^|[._])fc\d*([._]|$)|up_proj|down_proj|gate_proj|"
                  r"(^|[._])w[123]([._]|$)|dense", re.IGNORECASE)
_METRICS = (("alpha", "alpha (power-law tail)"), ("kappa", "kappa (HTMP), log scale"))
_NAMED_ROWS = 60  # beyond this many layers the phase map names every k-th row


def layer_group(layer: LayerResult) -> str:
    """The group a layer is drawn in."""
    if layer.kind == "embedding" or "embed" in layer.name.lower():
        return "embeddings"
    if layer.kind == "head":
        return "output head"
    if layer.kind.startswith("conv"):
        return "conv"
    if _ATTENTION.search(layer.name):
        return "attention"
    if _MLP.search(layer.name):
        return "MLP"
    return "other"


def metrics_figure(trajectory: Trajectory):  # type: ignore[no-untyped-def]
    """alpha and kappa against step: a column per layer group, a row per metric."""
    with figure_style():
        return _metrics_figure(trajectory)


def _groups(trajectory: Trajectory) -> dict[str, list[str]]:
    kinds: dict[str, LayerResult] = {}
    for run_step in trajectory.steps:
        for layer in run_step.report.layers:
            kinds.setdefault(layer.name, layer)
    found: dict[str, list[str]] = {}
    for name in trajectory.layer_names:
        found.setdefault(layer_group(kinds[name]), []).append(name)
    return {group: found[group] for group in GROUPS if group in found}


def _metrics_figure(trajectory: Trajectory):  # type: ignore[no-untyped-def]
    groups = _groups(trajectory)
    # Without HTMP fits (htmp=False) there is no kappa to draw: its row goes.
    metrics = [(metric, label) for metric, label in _METRICS
               if any(value is not None for name in trajectory.layer_names for _, value in trajectory.series(name, metric))]
    metrics = metrics or list(_METRICS[:1])
    width = max(5.6, 3.4 * len(groups) + 1.0)
    fig, axes = new_figure((width, 1.2 + 2.4 * len(metrics)), 100, ncols=len(groups), nrows=len(metrics))
    axes = np.asarray(axes).reshape(len(metrics), len(groups))
    for column, (group, names) in enumerate(groups.items()):
        for row, (metric, label) in enumerate(metrics):
            ax = axes[row, column]
            lines = []
            for name in names:
                points = [(step, value) for step, value in trajectory.series(name, metric) if value is not None]
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, color="#999999", linewidth=0.7, alpha=0.6)
                    lines.append(dict(points))
            steps = [s.step for s in trajectory.steps]
            median = [np.median([line[s] for line in lines if s in line]) if any(s in line for line in lines) else np.nan
                      for s in steps]
            ax.plot(steps, median, color="#D55E00", linewidth=2.2, label="median", marker="o", markersize=3)
            if metric == "kappa":
                ax.set_yscale("log")
            if metric == "alpha":
                ax.axhline(2.0, color="#0072B2", linestyle=":", linewidth=1, label="alpha 2")
                ax.set_title(f"{group} ({len(names)} layers)")
            if column == 0:
                ax.set_ylabel(label)
            if row == len(metrics) - 1:
                ax.set_xlabel("step")
            ax.grid(True, color="#e5e5e5", linewidth=0.6)
            if row == 0 and column == 0:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{trajectory.source.name}: alpha and kappa against step (grey: each layer)", fontsize=10)
    fig.subplots_adjust(left=0.85 / width, right=1 - 0.2 / width, bottom=0.09, top=0.88, wspace=0.28, hspace=0.25)
    return fig


def phase_map_figure(trajectory: Trajectory):  # type: ignore[no-untyped-def]
    """The phase of every layer (rows, network order) at every analysed step (columns)."""
    with figure_style():
        return _phase_map_figure(trajectory)


def _phase_map_figure(trajectory: Trajectory):  # type: ignore[no-untyped-def]
    names = trajectory.layer_names
    phases = list(PHASE_STYLE)
    codes = np.full((len(names), len(trajectory.steps)), np.nan)
    for column, run_step in enumerate(trajectory.steps):
        here = {layer.name: layer for layer in run_step.report.layers}
        for row, name in enumerate(names):
            layer = here.get(name)
            if layer is None:
                continue
            if layer.status != "success" or layer.phase is None:
                codes[row, column] = len(phases)  # failed
            else:
                codes[row, column] = phases.index(layer.phase.phase)
    from matplotlib.colors import ListedColormap

    colours = ListedColormap([PHASE_STYLE[p][0] for p in phases] + [FAILED_STYLE[0]]).with_extremes(bad="#ffffff")
    height = min(14.0, 1.6 + 0.16 * len(names))
    width = min(14.0, 3.6 + 0.22 * len(trajectory.steps))
    fig, ax = new_figure((width, height), 100)
    ax.imshow(np.ma.masked_invalid(codes), aspect="auto", interpolation="nearest", cmap=colours,
              vmin=-0.5, vmax=len(phases) + 0.5)
    every = max(1, int(np.ceil(len(names) / _NAMED_ROWS)))
    ax.set_yticks(range(0, len(names), every), [names[k] for k in range(0, len(names), every)],
                  fontsize=7 if len(names) <= 30 else 5)
    step_every = max(1, int(np.ceil(len(trajectory.steps) / 16)))
    ax.set_xticks(range(0, len(trajectory.steps), step_every),
                  [str(trajectory.steps[k].step) for k in range(0, len(trajectory.steps), step_every)], fontsize=7)
    ax.set_xlabel("step")
    seen = {int(c) for c in codes[np.isfinite(codes)]}
    from matplotlib.patches import Patch

    legend = [Patch(color=PHASE_STYLE[p][0], label=p) for k, p in enumerate(phases) if k in seen]
    if len(phases) in seen:
        legend.append(Patch(color=FAILED_STYLE[0], label="failed"))
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    ax.set_title(f"phase of each layer at each step ({len(names)} layers, {len(trajectory.steps)} steps)")
    _fit_margins(fig, ax)
    return fig


def _fit_margins(fig, ax) -> None:  # type: ignore[no-untyped-def]
    """Margins measured on the drawn figure: the row labels (layer names, however long) on the left
    and the legend on the right stay inside it, and the figure widens to keep the map its size."""
    renderer = fig.canvas.get_renderer()
    labels = [t.get_window_extent(renderer).width for t in ax.get_yticklabels() if t.get_text()]
    legend = ax.get_legend()
    left_in = (max(labels, default=0.0) + 12) / fig.dpi + 0.15
    right_in = (legend.get_window_extent(renderer).width / fig.dpi + 0.25) if legend is not None else 0.3
    map_in = fig.get_size_inches()[0] - 2.4  # the width first chosen, less what margins were guessed at
    width = left_in + max(map_in, 2.0) + right_in
    fig.set_size_inches(width, fig.get_size_inches()[1])
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(left=left_in / width, right=1 - right_in / width, bottom=min(0.45, 0.55 / height),
                        top=1 - min(0.3, 0.4 / height))


def phase_map_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}-phases{path.suffix}")


def save_trajectory_figures(trajectory: Trajectory, path: Path) -> list[Path]:
    """The metrics figure at `path` and the phase map beside it (`<stem>-phases<suffix>`)."""
    save(metrics_figure(trajectory), path, "--plot")
    save(phase_map_figure(trajectory), phase_map_path(path), "--plot")
    return [path, phase_map_path(path)]


def trajectory_svgs(trajectory: Trajectory) -> tuple[str, str]:
    """Both figures as inline SVG, for the HTML report."""
    return svg_markup(metrics_figure(trajectory)), svg_markup(phase_map_figure(trajectory))
