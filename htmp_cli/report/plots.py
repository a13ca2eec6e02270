"""Figures, drawn with matplotlib's Agg backend (no display needed), written to files."""

from __future__ import annotations

from pathlib import Path

from htmp_cli.errors import HtmpError


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        raise HtmpError("figures need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def correlation_scatter(x: list[float], y: list[float], names: list[str], metric: str, label: str,
                        rho: float, tau: float, path: Path) -> None:
    """One metric against one label, a point per checkpoint, named; the rank correlations in the title."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    ax.scatter(x, y, s=36, color="#0072B2", edgecolor="black", linewidth=0.5, zorder=3)
    fig.canvas.draw()  # fixes the axes limits, so data can be placed in pixels
    placed: list[tuple[float, float]] = []
    for xi, yi, name in zip(x, y, names):
        # A name goes beside its point unless an earlier name is already there: no overlapping text.
        px, py = ax.transData.transform((xi, yi))
        if all(abs(px - qx) > 7 * max(len(name), 4) or abs(py - qy) > 12 for qx, qy in placed):
            ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7, color="#444444")
            placed.append((px, py))
    ax.set_xlabel(f"mean {metric} over layers")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs mean {metric}: Spearman {rho:+.2f}, Kendall {tau:+.2f} (n = {len(x)})", fontsize=10)
    ax.grid(True, color="#dddddd", linewidth=0.6, zorder=0)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as err:
        raise HtmpError(f"--plot {path}: cannot write: {err.strerror or err}") from None
    finally:
        plt.close(fig)
