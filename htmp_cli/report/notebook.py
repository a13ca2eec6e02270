"""A report as a compact HTML table for Jupyter (`Report._repr_html_`)."""

from __future__ import annotations

from html import escape

from htmp_cli.results import Report

_SHOWN = 60  # layers in the table; the rest are counted below it


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def report_html(report: Report) -> str:
    s = report.summary
    rows = []
    for layer in report.layers[:_SHOWN]:
        fit_alpha = layer.alpha if layer.power_law is not None and layer.power_law.ok else None
        kappa = "-" if layer.kappa is None else f"{layer.kappa:.3g} ({layer.kappa_orientation})"
        phase = layer.phase.phase if layer.phase is not None else f"failed: {layer.reason}"
        cells = (layer.name, "x".join(map(str, layer.shape)), _number(fit_alpha), kappa, phase,
                 ", ".join(layer.warnings))
        rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    more = len(report.layers) - _SHOWN
    phases = ", ".join(f"{name} {count}" for name, count in s.phase_counts.items() if count)
    caption = (f"htmp: {escape(report.source.path)}: {s.n_layers} layers, {s.n_skipped} tensors skipped, "
               f"{s.n_failed_layers} failed; mean alpha {_number(s.means.get('alpha'))}; phases: {escape(phases or '-')}")
    head = "".join(f"<th>{h}</th>" for h in ("layer", "shape", "alpha", "kappa", "phase", "warnings"))
    tail = f"<p>... and {more} more layers (report.to_dataframe() has them all)</p>" if more > 0 else ""
    return (f"<table><caption style='text-align:left'>{caption}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{tail}")
