"""Figures, drawn with matplotlib's Agg backend (no display needed) from a report's layers.

Colours are the Okabe-Ito palette (distinguishable with every common colour-vision deficiency) and
every curve also differs by line style and every phase by marker shape, so a greyscale print still
tells them apart.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from htmp_cli.errors import HtmpError
from htmp_cli.fits import curves
from htmp_cli.fits.vectors import FALSE_ALARM
from htmp_cli.results import LayerResult

# Okabe-Ito; a marker per phase for greyscale.
PHASE_STYLE = {
    "random-like": ("#56B4E9", "o"),
    "bleeding-out": ("#009E73", "s"),
    "bulk+spikes": ("#0072B2", "^"),
    "bulk-decay": ("#E69F00", "D"),
    "heavy-tailed": ("#D55E00", "v"),
    "rank-collapse": ("#CC79A7", "X"),
    "unclassified": ("#F0E442", "P"),  # no rule held (fits/phases.py): the palette's last colour
}
FAILED_STYLE = ("#000000", "x")
COLOURS = {"histogram": "#BBBBBB", "power_law": "#D55E00", "mp": "#0072B2", "htmp": "#009E73",
           "xmin": "#E69F00", "edge": "#56B4E9"}


# Text as text (small, searchable SVG); a fixed hash salt keeps SVG ids the same run to run.
_RC = {"svg.fonttype": "none", "svg.hashsalt": "htmp", "font.size": 9, "axes.titlesize": 10}


@contextmanager
def figure_style() -> Iterator[None]:
    """Our rcParams for the duration of a drawing or a save, the caller's restored after: a library
    that imports htmp must not find its own figures restyled."""
    try:
        import matplotlib
    except ImportError:
        raise HtmpError("figures need matplotlib: pip install matplotlib") from None
    with matplotlib.rc_context(_RC):
        yield


def new_figure(figsize: tuple[float, float], dpi: int, ncols: int = 1, nrows: int = 1):  # type: ignore[no-untyped-def]
    """A figure on its own Agg canvas, outside pyplot: no backend is chosen for the caller, no
    figure joins pyplot's list (nothing to close), and no display is needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols)


def draw(fig) -> None:  # type: ignore[no-untyped-def]
    """Lay a figure out as it will be saved: ticks made lazily at a draw take their sizes from the
    rcParams of that moment, so a draw outside `figure_style` would measure other text."""
    with figure_style():
        fig.canvas.draw()


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def esd_title(layer: LayerResult) -> str:
    fit, best = layer.power_law, layer.htmp_best
    phase = (layer.phase.phase if layer.phase is not None else None) or layer.status
    alpha = f"alpha {_fmt(fit.alpha)}" if fit is not None and fit.status == "success" else "alpha: fit failed"
    kappa = f"kappa {_fmt(best.kappa)} ({best.orientation})" if best else "kappa -"
    return f"{layer.name}\n{alpha}, {kappa}, {phase}"


def esd_figure(layer: LayerResult):  # type: ignore[no-untyped-def]
    """The ESD of one layer (its eigenvalues kept: `keep_eigenvalues=True`) on log-log axes with the
    fitted power law, MP and HTMP densities."""
    if layer.eigenvalues is None:
        raise HtmpError(f"{layer.name}: no eigenvalues kept, so no ESD to draw")
    with figure_style():
        return _esd_figure(layer, np.asarray(layer.eigenvalues, dtype=np.float64))


def _esd_figure(layer: LayerResult, values: np.ndarray):  # type: ignore[no-untyped-def]
    with_vectors = layer.vector_ipr is not None and layer.vectors is not None
    if with_vectors:
        fig, (ax, below) = new_figure((6.4, 6.6), 100, nrows=2)
    else:
        fig, ax = new_figure((6.4, 4.4), 100)
    edges, density = curves.esd_histogram(values)
    ax.stairs(density, edges, fill=True, color=COLOURS["histogram"], edgecolor="#666666", linewidth=0.6,
              label=f"ESD ({values.size} eigenvalues)", gid="esd-histogram")
    if layer.shuffled_eigenvalues is not None:
        shuffled = np.asarray(layer.shuffled_eigenvalues, dtype=np.float64)
        # On the ESD's own bins (those past them are left out): the two read bar by bar.
        counts, _ = np.histogram(shuffled, bins=edges)
        with np.errstate(divide="ignore", invalid="ignore"):
            shuffled_density = np.where(counts > 0, counts / (shuffled.size * np.diff(edges)), 0.0)
        traps = layer.randomized.n_traps if layer.randomized is not None else None
        ax.stairs(shuffled_density, edges, fill=False, color="#CC79A7", linewidth=1.2,
                  label="entries shuffled" + (f" ({traps} traps)" if traps is not None else ""), gid="esd-shuffled")
    grid = np.geomspace(edges[0], edges[-1], 400)
    total = max(values.size, 1)
    fit = layer.power_law
    if fit is not None and fit.status == "success":
        share = fit.tail_size / total
        ax.plot(grid, curves.power_law_density(grid, fit.alpha, fit.xmin, share), color=COLOURS["power_law"],
                linestyle="-", linewidth=2, label=f"power law, alpha {fit.alpha:.2f}", gid="power-law")
        ax.axvline(fit.xmin, color=COLOURS["xmin"], linestyle="--", linewidth=1.2,
                   label=f"xmin {fit.xmin:.3g}", gid="xmin")
    mp = layer.mp
    if mp is not None and mp.status == "success":
        ax.plot(grid, curves.mp_density(grid, mp.scale, mp.gamma, mp.n_bulk / total), color=COLOURS["mp"],
                linestyle="--", linewidth=1.6, label=f"MP bulk ({mp.n_bulk} eigenvalues)", gid="mp")
        ax.axvline(mp.lambda_plus, color=COLOURS["edge"], linestyle=":", linewidth=1.6,
                   label=f"MP edge l+ {mp.lambda_plus:.3g}", gid="mp-edge")
    best = layer.htmp_best
    if best is not None:
        positive = int((values > 0).sum())
        ax.plot(grid, curves.htmp_density(grid, best.kappa, best.gamma, best.scale, best.orientation, positive / total),
                color=COLOURS["htmp"], linestyle="-.", linewidth=1.6,
                label=f"HTMP, kappa {best.kappa:.3g} ({best.orientation})", gid="htmp")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    positive_density = density[density > 0]
    if positive_density.size:
        ax.set_ylim(positive_density.min() / 5, positive_density.max() * 5)
    ax.set_xlabel("eigenvalue lambda of W^T W")
    ax.set_ylabel("density (per eigenvalue, per unit lambda)")
    ax.set_title(esd_title(layer))
    ax.legend(loc="lower left", fontsize=7.5, framealpha=0.9)
    ax.grid(True, which="major", color="#e5e5e5", linewidth=0.6)
    if with_vectors:
        _localisation_panel(below, layer, values, ax.get_xlim())
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.08, top=0.91, hspace=0.28)
        return fig
    # Fixed margins: tight_layout measured 0.4 s a figure (40% of a report of MiniLM-L6).
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.11, top=0.87)
    return fig


def _localisation_panel(ax, layer: LayerResult, values: np.ndarray, xlim: tuple[float, float]) -> None:  # type: ignore[no-untyped-def]
    """Each eigenvector's IPR over the Haar mean 3 / (n + 2), against its eigenvalue: 1 is a random
    vector's, n a basis vector's; above the dashed line a vector is called localised."""
    evidence = layer.vectors
    assert evidence is not None and layer.vector_ipr is not None
    relative = np.asarray(layer.vector_ipr, dtype=np.float64) / evidence.haar_ipr
    shown = values > 0
    flagged = shown & (layer.vector_ipr > evidence.threshold)
    ax.scatter(values[shown & ~flagged], relative[shown & ~flagged], s=6, color="#0072B2", marker="o",
               linewidths=0, label="eigenvector", gid="vector-ipr")
    if flagged.any():
        ax.scatter(values[flagged], relative[flagged], s=16, color="#D55E00", marker="^", linewidths=0,
                   label=f"localised ({int(flagged.sum())})", gid="vector-localised")
    ax.axhline(evidence.threshold / evidence.haar_ipr, color="#000000", linestyle="--", linewidth=1.0,
               label=f"Haar {1 - FALSE_ALARM:.3g} quantile", gid="vector-threshold")
    ax.axhline(1.0, color="#999999", linestyle=":", linewidth=1.0, label="Haar mean", gid="vector-haar")
    fit, mp = layer.power_law, layer.mp
    if fit is not None and fit.status == "success":
        ax.axvline(fit.xmin, color=COLOURS["xmin"], linestyle="--", linewidth=1.2, gid="vector-xmin")
    if mp is not None and mp.status == "success":
        ax.axvline(mp.lambda_plus, color=COLOURS["edge"], linestyle=":", linewidth=1.6, gid="vector-edge")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*xlim)
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("eigenvalue lambda of W^T W")
    ax.set_ylabel("eigenvector IPR / Haar mean")
    tail = evidence.tail
    ax.set_title("eigenvector localisation" + (f": tail {tail.n_localised}/{tail.count} localised, entropy z "
                                               f"{tail.entropy_z:.3g}" if tail is not None else ""))
    ax.legend(loc="upper left", fontsize=7.5, framealpha=0.9)
    ax.grid(True, which="major", color="#e5e5e5", linewidth=0.6)


def _plain_log_ticks(axis) -> None:  # type: ignore[no-untyped-def]
    """Log-axis labels as plain numbers (0.01, 1, 1e+04): matplotlib's 10^k labels go through its
    TeX parser, which measured a third of the time of a report."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _tick_labels(ax, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    if len(names) <= 48:
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=6.5 if len(names) > 24 else 7.5)
    ax.set_xlim(-0.7, len(names) - 0.3)


def overview_figure(layers: Sequence[LayerResult], title: str):  # type: ignore[no-untyped-def]
    """Alpha per layer in network order, coloured by phase, with the alpha = 2 and 6 lines; kappa beside it."""
    with figure_style():
        return _overview_figure(layers, title)


def _overview_figure(layers: Sequence[LayerResult], title: str):  # type: ignore[no-untyped-def]
    names = [layer.name for layer in layers]
    width = min(16.0, max(8.0, 0.22 * len(layers) + 4))
    bottom = 0.18 + (0.012 * max((len(n) for n in names), default=0) if len(names) <= 48 else 0)
    fig, (left, right) = new_figure((width, 4.2 + 4.2 * bottom), 100, ncols=2)
    seen: set[str] = set()
    for index, layer in enumerate(layers):
        phase = layer.phase.phase if layer.status == "success" and layer.phase is not None else None
        colour, marker = PHASE_STYLE.get(phase or "", FAILED_STYLE)
        label = (phase or "failed") if (phase or "failed") not in seen else None
        seen.add(phase or "failed")
        fit = layer.power_law
        if fit is not None and fit.status == "success":
            left.scatter(index, fit.alpha, color=colour, marker=marker, edgecolor="black", linewidth=0.4, s=34,
                         zorder=3, label=label, gid=f"alpha-{index}")
        best = layer.htmp_best
        if best is not None:
            right.scatter(index, best.kappa, color=colour, marker=marker, edgecolor="black", linewidth=0.4, s=34,
                          zorder=3, gid=f"kappa-{index}")
    left.axhspan(2.0, 6.0, color="#f2f2f2", zorder=0)
    # The lines are named in the legend, not on the plot, where a label could hide a point.
    left.axhline(2.0, color="#444444", linestyle="--", linewidth=1, gid="alpha-line-2",
                 label="alpha = 2 (below: very heavy-tailed)")
    left.axhline(6.0, color="#444444", linestyle=":", linewidth=1, gid="alpha-line-6", label="alpha = 6 (above: under-trained)")
    top = left.get_ylim()[1]
    left.set_ylim(min(left.get_ylim()[0], 1.5), max(top, 6.6))
    left.set_ylabel("power-law exponent alpha")
    left.set_title("alpha per layer (network order)")
    right.set_yscale("log")
    _plain_log_ticks(right.yaxis)
    right.set_ylabel("HTMP kappa (log scale)")
    right.set_title("kappa per layer (smaller: heavier-tailed)")
    for ax in (left, right):
        _tick_labels(ax, names)
        ax.set_xlabel("layer" if len(names) <= 48 else "layer index (network order)")
        ax.grid(True, axis="y", color="#e5e5e5", linewidth=0.6)
    fig.suptitle(title, y=0.995, fontsize=10)
    handles, labels = left.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.955))
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.85 if handles else 0.35) / height))  # title and legend: fixed inches
    return fig


def correlation_figure(x: list[float], y: list[float], names: list[str], metric: str, label: str,
                       rho: float, tau: float):  # type: ignore[no-untyped-def]
    """One metric against one label, a point per checkpoint, named; the rank correlations in the title."""
    with figure_style():
        fig, ax = new_figure((6.4, 4.8), 120)
        ax.scatter(x, y, s=36, color="#0072B2", edgecolor="black", linewidth=0.5, zorder=3, gid="points")
        ax.set_xlabel(f"mean {metric} over layers")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs mean {metric}: Spearman {rho:+.2f}, Kendall {tau:+.2f} (n = {len(x)})", fontsize=10)
        ax.grid(True, color="#dddddd", linewidth=0.6, zorder=0)
        fig.tight_layout()
        fig.canvas.draw()  # fixes the axes limits, so data can be placed in pixels
        _name_points(fig, ax, x, y, names)
        return fig


# Where a point's name may go, in order of preference: offset (points) and alignment.
_LABEL_SPOTS = ((4, 3, "left", "bottom"), (-4, 3, "right", "bottom"), (4, -3, "left", "top"), (-4, -3, "right", "top"))


def _name_points(fig, ax, x: list[float], y: list[float], names: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Name each point on the first side where the name stays inside the axes (so inside the figure:
    a name past the edge is cut off in the SVG) and covers no other name or point. A name with no
    such side is left out; the report's table still names every checkpoint."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer).padded(-2)  # a little room for a browser font a bit wider than ours
    radius = 3 * fig.dpi / 72  # the marker (s = 36 points^2) is 6 points across
    taken = []
    for px, py in ax.transData.transform(np.column_stack([x, y])):
        taken.append(Bbox.from_extents(px - radius, py - radius, px + radius, py + radius))
    for xi, yi, name, own in zip(x, y, names, list(taken)):
        for dx, dy, ha, va in _LABEL_SPOTS:
            text = ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=7,
                               color="#444444", annotation_clip=False)
            box = text.get_window_extent(renderer)
            if (inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
                    and not any(other is not own and box.overlaps(other) for other in taken)):
                taken.append(box)
                break
            text.remove()


def save(fig, path: Path, what: str = "figure", close: bool = True) -> None:  # type: ignore[no-untyped-def]
    """Write a figure (format from the file name). `close` is kept for callers: a figure outside
    pyplot needs no closing, it is freed with its last reference."""
    try:
        with figure_style():
            fig.savefig(path)
    except OSError as err:
        raise HtmpError(f"{what} {path}: cannot write: {err.strerror or err}") from None


def svg_markup(fig) -> str:  # type: ignore[no-untyped-def]
    """The figure as an inline <svg> element (no XML prolog). Its ids are matplotlib's, the same in
    every figure: a page holding several must scope them (html.scoped_ids)."""
    buffer = io.StringIO()
    with figure_style():
        # No metadata block: it carries the date (a report would differ run to run) and links to RDF vocabularies.
        fig.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]
