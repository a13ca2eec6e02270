"""The JSON contract (design.md section 3) and the CSV and Markdown views derived from it."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from htmp_cli.results import Report, report_to_dict

# The per-layer columns shared by the table, CSV and Markdown views: (label, key in the flat row).
TABLE_COLUMNS = (
    ("name", "name"),
    ("kind", "kind"),
    ("dtype", "dtype"),
    ("shape", "shape"),
    ("alpha", "alpha"),
    ("D", "D"),
    ("tail", "tail_size"),
    ("alpha_weighted", "alpha_weighted"),
    ("log_norm", "log_norm"),
    ("log_spectral_norm", "log_spectral_norm"),
    ("stable_rank", "stable_rank"),
    ("kappa", "kappa"),
    ("phase", "phase"),
    ("warning", "warning"),
)


def flat_layer_row(layer: dict[str, Any]) -> dict[str, Any]:
    """One flat record per layer (from its JSON form), for CSV, Markdown and the terminal table."""
    fit = layer["power_law"] or {}
    metrics = layer["metrics"] or {}
    htmp = layer.get("htmp") or {}
    best = htmp.get(htmp.get("best") or "", None) or {}
    phase = layer.get("phase") or {}
    if layer["status"] != "success":
        warning = f"failed: {layer['reason']}"
    elif fit.get("status") == "failed":
        warning = f"fit failed: {fit.get('reason')}"
    else:
        warning = ", ".join(layer["warnings"])
    if layer.get("note") and layer["note"].startswith("--split-fused"):
        warning = ", ".join(filter(None, [warning, "not split"]))
    return {
        "name": layer["name"],
        "tensor": layer["tensor"],
        "kind": layer["kind"],
        "dtype": layer["dtype"],
        "shape": "x".join(str(d) for d in layer["shape"]) + (f" x{layer['slices']}" if layer.get("slices", 1) > 1 else ""),
        "N": layer["N"],
        "M": layer["M"],
        "Q": layer["Q"],
        "status": layer["status"],
        "alpha": fit.get("alpha"),
        "sigma": fit.get("sigma"),
        "xmin": fit.get("xmin"),
        "xmax": fit.get("xmax"),
        "D": fit.get("D"),
        "tail_size": fit.get("tail_size"),
        "fit_status": fit.get("status"),
        **{key: metrics.get(key) for key in (
            "alpha_weighted", "log_alpha_norm", "norm", "log_norm", "spectral_norm", "log_spectral_norm",
            "stable_rank", "entropy", "rank_loss", "log_spread")},
        "n_zero": layer["n_zero"],
        "kappa": best.get("kappa"),  # the better orientation's (htmp.best): the one kappa everywhere
        "kappa_orientation": best.get("orientation"),
        "kappa_at_bound": best.get("at_bound"),
        "kappa_direct": ((htmp.get("direct") or {}).get("kappa")),
        "kappa_inverse": ((htmp.get("inverse") or {}).get("kappa")),
        "phase": phase.get("summary"),
        "phase_name": phase.get("phase"),
        "warning": warning,
    }


def kappa_text(row: dict[str, Any]) -> str:
    """kappa as the table shows it: its value, its orientation, and whether it sits at a bound."""
    if row["kappa"] is None:
        return "-"
    return (f"{row['kappa']:.3g} {'inv' if row['kappa_orientation'] == 'inverse' else 'dir'}"
            + (" (bound)" if row["kappa_at_bound"] else ""))


def as_dict(report: Report | dict[str, Any]) -> dict[str, Any]:
    """A report in its JSON form: a saved report is one already."""
    return report if isinstance(report, dict) else report_to_dict(report)


def to_json(report: Report | dict[str, Any]) -> str:
    return json.dumps(as_dict(report), indent=2) + "\n"


def to_csv(report: Report | dict[str, Any]) -> str:
    rows = [flat_layer_row(layer) for layer in as_dict(report)["layers"]]
    out = io.StringIO()
    fieldnames = list(rows[0]) if rows else list(flat_layer_row(_EMPTY_LAYER))
    writer = csv.DictWriter(out, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def format_number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits}e}"
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(report: Report | dict[str, Any]) -> str:
    data = as_dict(report)
    lines = [f"# htmp analysis of `{data['source']['path']}`", ""]
    lines.append("| " + " | ".join(label for label, _ in TABLE_COLUMNS) + " |")
    lines.append("|" + "---|" * len(TABLE_COLUMNS))
    for layer in data["layers"]:
        row = flat_layer_row(layer)
        cells = [(kappa_text(row) if key == "kappa" else format_number(row[key])).replace("|", "\\|")
                 for _, key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Summary", ""]
    lines += [f"- {line}" for line in summary_lines(data)]
    if data["skipped"]:
        lines += ["", "## Skipped tensors", "", "| tensor | shape | dtype | reason |", "|---|---|---|---|"]
        for s in data["skipped"]:
            shape = "x".join(str(d) for d in s["shape"]) or "scalar"
            lines.append(f"| {s['name']} | {shape} | {s['dtype']} | {s['reason']} |")
    return "\n".join(lines) + "\n"


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The model summary as short human-readable lines (shared by the table and Markdown views)."""
    s = data["summary"]
    means = s["means"]
    source = data["source"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in (s.get("kind_counts") or {}).items())
    lines = [
        f"{source['format']}, {source['size_bytes']:,} bytes" + (f"; {'; '.join(source['notes'])}" if source.get("notes") else ""),
        f"{s['n_layers']} matrices analysed ({kinds or 'none'}), {s['n_skipped']} tensors skipped, "
        f"{s['n_failed_layers']} failed layers, {s['n_failed_fits']} failed tail fits",
        "mean alpha " + format_number(means["alpha"]) + ", mean D " + format_number(means["D"])
        + ", mean alpha_weighted " + format_number(means["alpha_weighted"])
        + ", mean log_norm " + format_number(means["log_norm"])
        + ", mean log_spectral_norm " + format_number(means["log_spectral_norm"])
        + ", mean stable_rank " + format_number(means["stable_rank"]),
        f"alpha < 2 (over-trained): {s['warning_counts']['over-trained']}, "
        f"alpha > 6 (under-trained): {s['warning_counts']['under-trained']}",
        "phases: " + ", ".join(f"{name} {count}" for name, count in s["phase_counts"].items()),
        *[f"{label}: {', '.join(names)}" for label, names in s["worrying"].items() if names],
        *[f"{label}: {', '.join(names)}" for label, names in _failures(data["layers"]).items() if names],
        *[_group_line(group) for group in s.get("expert_groups") or []],
        *[f"{layer['name']}: {layer['note']}" for layer in data["layers"]
          if (layer.get("note") or "").startswith("--split-fused")],
        "time: " + ", ".join(f"{k} {v:.2f} s" for k, v in s["timings"].items())
        + (f" (read, eigen and fit summed over {s['workers']} processes)" if s.get("workers", 1) > 1 else ""),
    ]
    return lines


def _failures(layers: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {
        "failed layers": [layer["name"] for layer in layers if layer["status"] != "success"],
        "failed tail fits": [layer["name"] for layer in layers if layer["status"] == "success"
                             and (layer.get("power_law") or {}).get("status") == "failed"],
    }


def _group_line(group: dict[str, Any]) -> str:
    phases = ", ".join(f"{name} {count}" for name, count in group["phase_counts"].items())
    alpha = (f"alpha mean {format_number(group['alpha_mean'])} (min {format_number(group['alpha_min'])}, "
             f"max {format_number(group['alpha_max'])})") if group["n_fitted"] else "no tail fits"
    return f"experts {group['name']}: {group['n_experts']} experts, {alpha}; phases: {phases or '-'}"


_EMPTY_LAYER = {
    "name": "", "tensor": "", "kind": "", "dtype": "", "shape": [], "N": 0, "M": 0, "Q": 0.0,
    "status": "", "reason": None, "slices": 1, "note": None, "n_zero": 0, "power_law": None, "metrics": None, "warnings": [],
    "htmp": None, "phase": None,
}
