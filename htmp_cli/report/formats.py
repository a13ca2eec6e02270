"""The JSON contract (design.md section 3) and the CSV and Markdown views of a Report."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Sequence

from htmp_cli.loaders.matrices import SkippedTensor
from htmp_cli.results import ExpertGroup, LayerResult, Report

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


def finite(value: Any) -> Any:
    """A non-finite float as None, as the JSON holds it (results.report_to_dict): every view shows
    what the JSON says, and a report read back holds NaN where its JSON held null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def flat_layer_row(layer: LayerResult) -> dict[str, Any]:
    """One flat record per layer, for CSV, Markdown, HTML and the terminal table."""
    fit, metrics, best, phase = layer.power_law, layer.metrics, layer.htmp_best, layer.phase
    if layer.status != "success":
        warning = f"failed: {layer.reason}"
    elif fit is not None and fit.status == "failed":
        warning = f"fit failed: {fit.reason}"
    else:
        warning = ", ".join(layer.warnings)
    if layer.note and layer.note.startswith("--split-fused"):
        warning = ", ".join(filter(None, [warning, "not split"]))
    row = {
        "name": layer.name,
        "tensor": layer.tensor,
        "kind": layer.kind,
        "dtype": layer.dtype,
        "shape": "x".join(str(d) for d in layer.shape) + (f" x{layer.slices}" if layer.slices > 1 else ""),
        "N": layer.N,
        "M": layer.M,
        "Q": layer.Q,
        "status": layer.status,
        "alpha": fit.alpha if fit else None,
        "sigma": fit.sigma if fit else None,
        "xmin": fit.xmin if fit else None,
        "xmax": fit.xmax if fit else None,
        "D": fit.D if fit else None,
        "tail_size": fit.tail_size if fit else None,
        "fit_status": fit.status if fit else None,
        **{key: getattr(metrics, key) if metrics else None for key in (
            "alpha_weighted", "log_alpha_norm", "norm", "log_norm", "spectral_norm", "log_spectral_norm",
            "stable_rank", "entropy", "rank_loss", "log_spread")},
        "n_zero": layer.n_zero,
        "kappa": best.kappa if best else None,  # the better orientation's: the one kappa everywhere
        "kappa_orientation": best.orientation if best else None,
        "kappa_at_bound": best.at_bound if best else None,
        "kappa_low": best.kappa_low if best else None,
        "kappa_high": best.kappa_high if best else None,
        "kappa_direct": layer.htmp.kappa if layer.htmp else None,
        "kappa_inverse": layer.htmp_inverse.kappa if layer.htmp_inverse else None,
        "phase": phase.summary if phase else None,
        "phase_name": phase.phase if phase else None,
        "phase_htmp": phase.htmp_phase if phase else None,
        "warning": warning,
        **vector_fields(layer),
        **randomized_fields(layer),
        **tail_test_fields(layer),
        **farms_fields(layer),
    }
    return {key: finite(value) for key, value in row.items()}


# The eigenvector evidence's flat columns (--vectors; None without it): per part of the spectrum
# its vector count, localised vectors and entropy z-score.
VECTOR_PARTS = ("tail", "spikes", "bulk")


def vector_fields(layer: LayerResult) -> dict[str, Any]:
    evidence = layer.vectors
    fields: dict[str, Any] = {}
    for name in VECTOR_PARTS:
        part = getattr(evidence, name) if evidence is not None else None
        fields[f"{name}_vectors"] = part.count if part is not None else (0 if evidence is not None else None)
        fields[f"{name}_localised"] = part.n_localised if part is not None else (0 if evidence is not None else None)
        fields[f"{name}_entropy_z"] = part.entropy_z if part is not None else None
    return fields


def vectors_text(row: dict[str, Any]) -> str:
    """The table's eigenvector cell: the tail's localised vectors of its vectors, and the z-score of
    their mean entropy against Haar's (negative: less spread than random vectors)."""
    if row["tail_vectors"] is None:
        return "-"
    if not row["tail_vectors"]:
        return "no tail"
    return f"{row['tail_localised']}/{row['tail_vectors']} z={row['tail_entropy_z']:.3g}"


def farms_fields(layer: LayerResult) -> dict[str, Any]:
    """FARMS's flat columns (--farms; None without it)."""
    farms = layer.farms
    return {"farms_alpha": farms.alpha if farms else None, "farms_kappa": farms.kappa if farms else None,
            "farms_window": farms.window if farms else None}


def randomized_fields(layer: LayerResult) -> dict[str, Any]:
    """The randomization's flat columns (--randomize; None without it)."""
    result = layer.randomized
    return {"shuffled_traps": result.n_traps if result else None, "shuffled_alpha": result.alpha if result else None,
            "shuffled_ks": result.ks_distance if result else None,
            "tail_survives_shuffling": result.tail_survives if result else None}


def randomized_text(row: dict[str, Any]) -> str:
    """The table's randomization cell: the shuffled matrix's traps, the KS distance of the two
    spectra, and "survives" when the tail does."""
    if row["shuffled_ks"] is None:
        return "-"
    traps = "-" if row["shuffled_traps"] is None else row["shuffled_traps"]
    return f"{traps} ks={row['shuffled_ks']:.2g}" + (" survives" if row["tail_survives_shuffling"] else "")


def tail_test_fields(layer: LayerResult) -> dict[str, Any]:
    """The tail tests' flat columns (--bootstrap, --alternatives; None without them): the bootstrap
    p-value, the verdict and the favoured law, and each alternative's normalised R and p-value."""
    from htmp_cli.fits.tailtests import ALTERNATIVES

    tests = layer.tail_tests
    fields: dict[str, Any] = {"bootstrap_p": tests.bootstrap_p if tests else None,
                              "tail_verdict": tests.verdict if tests else None,
                              "tail_favoured": tests.favoured if tests else None}
    done = {c.alternative: c for c in tests.comparisons} if tests else {}
    for name in ALTERNATIVES:
        fields[f"R_{name}"] = done[name].normalized_R if name in done else None
        fields[f"p_{name}"] = done[name].p_value if name in done else None
    return fields


# How the table names the law the tail tests favour (JSON: `favoured`).
FAVOURED_TEXT = {"power_law": "power-law", "lognormal": "lognormal", "exponential": "exponential",
                 "stretched_exponential": "stretched-exp", "truncated_power_law": "cut-off"}


def tail_test_text(row: dict[str, Any]) -> str:
    """The table's tail-test cell: the bootstrap p-value, then the law the likelihood-ratio tests
    favour (FAVOURED_TEXT; "inconclusive" when none): `p=0.05 cut-off`."""
    parts = []
    if row["bootstrap_p"] is not None:
        parts.append(f"p={row['bootstrap_p']:.2g}")
    if row["tail_verdict"] is not None:
        parts.append(FAVOURED_TEXT.get(row["tail_favoured"], row["tail_favoured"]) if row["tail_favoured"]
                     else "inconclusive")
    return " ".join(parts) or "-"


def kappa_text(row: dict[str, Any]) -> str:
    """kappa as the table shows it: its value, its orientation, and whether it sits at a bound."""
    if row["kappa"] is None:
        return "-"
    return (f"{row['kappa']:.3g} {'inv' if row['kappa_orientation'] == 'inverse' else 'dir'}"
            + (" (bound)" if row["kappa_at_bound"] else ""))


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"


def to_csv(report: Report) -> str:
    rows = [flat_layer_row(layer) for layer in report.layers]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else list(flat_layer_row(_EMPTY_LAYER)),
                            lineterminator="\n")
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


def skipped_shape(skipped: SkippedTensor) -> str:
    return "x".join(str(d) for d in skipped.shape) or "scalar"


def report_columns(report: Report) -> tuple[tuple[str, str], ...]:
    """TABLE_COLUMNS, and the evidence columns that some layer of the report has (--vectors)."""
    extra: tuple[tuple[str, str], ...] = ()
    if any(layer.vectors is not None for layer in report.layers):
        extra += (("localised", "tail_vectors"),)
    if any(layer.randomized is not None for layer in report.layers):
        extra += (("shuffled", "shuffled_ks"),)
    if any(layer.tail_tests is not None for layer in report.layers):
        extra += (("tail_test", "tail_verdict"),)
    if any(layer.farms is not None for layer in report.layers):
        extra += (("farms_alpha", "farms_alpha"), ("farms_kappa", "farms_kappa"))
    return TABLE_COLUMNS + extra


# Columns whose cell is composed from several fields of the flat row, not its own value.
COMPOSED_CELLS = {"kappa": kappa_text, "tail_vectors": vectors_text, "shuffled_ks": randomized_text,
                  "tail_verdict": tail_test_text}


def cell_text(key: str, row: dict[str, Any]) -> str:
    """A flat row's value as the table, Markdown and HTML views show it."""
    composed = COMPOSED_CELLS.get(key)
    return composed(row) if composed is not None else format_number(row[key])


def to_markdown(report: Report) -> str:
    lines = [f"# htmp analysis of `{report.source.path}`", ""]
    columns = report_columns(report)
    lines.append("| " + " | ".join(label for label, _ in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for layer in report.layers:
        row = flat_layer_row(layer)
        cells = [cell_text(key, row).replace("|", "\\|") for _, key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Summary", ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    if report.skipped:
        lines += ["", "## Skipped tensors", "", "| tensor | shape | dtype | reason |", "|---|---|---|---|"]
        for s in report.skipped:
            lines.append(f"| {s.name} | {skipped_shape(s)} | {s.dtype} | {s.reason} |")
    return "\n".join(lines) + "\n"


def summary_lines(report: Report) -> list[str]:
    """The model summary as short human-readable lines (shared by the table, Markdown and HTML views)."""
    s, source = report.summary, report.source
    means = {name: finite(value) for name, value in s.means.items()}
    kinds = ", ".join(f"{kind} {count}" for kind, count in s.kind_counts.items())
    lines = [
        f"{source.format}, {source.size_bytes:,} bytes" + (f"; {'; '.join(source.notes)}" if source.notes else ""),
        f"{s.n_layers} {'matrix' if s.n_layers == 1 else 'matrices'} analysed ({kinds or 'none'}), "
        f"{_count(s.n_skipped, 'tensor')} skipped, {_count(s.n_failed_layers, 'failed layer')}, "
        f"{_count(s.n_failed_fits, 'failed tail fit')}",
        "mean alpha " + format_number(means["alpha"]) + _standard_error(s.standard_errors.get("alpha"))
        + ", mean kappa " + format_number(means.get("kappa")) + _standard_error(s.standard_errors.get("kappa"))
        + ", mean D " + format_number(means["D"])
        + ", mean alpha_weighted " + format_number(means["alpha_weighted"])
        + ", mean log_norm " + format_number(means["log_norm"])
        + ", mean log_spectral_norm " + format_number(means["log_spectral_norm"])
        + ", mean stable_rank " + format_number(means["stable_rank"]),
        f"alpha < 2 (over-trained): {s.warning_counts['over-trained']}, "
        f"alpha > 6 (under-trained): {s.warning_counts['under-trained']}",
        "phases: " + ", ".join(f"{name} {count}" for name, count in s.phase_counts.items()),
        *(["phases in the HTMP view: " + ", ".join(f"{name} {count}" for name, count in s.htmp_phase_counts.items())
           + f"; the views differ on {_count(len(s.views_disagree), 'layer')}"] if sum(s.htmp_phase_counts.values()) else []),
        *[f"{label}: {', '.join(names)}" for label, names in s.worrying.items() if names],
        *[f"{label}: {', '.join(names)}" for label, names in _failures(report.layers).items() if names],
        *[_group_line(group) for group in s.expert_groups],
        *[f"{layer.name}: {layer.note}" for layer in report.layers if (layer.note or "").startswith("--split-fused")],
        *_update_lines(report.layers),
        *_evidence_lines(report.layers),
        "time: " + ", ".join(f"{k} {v:.2f} s" for k, v in s.timings.items())
        + (f" (read, eigen and fit summed over {s.workers} processes)" if s.workers > 1 else ""),
    ]
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _standard_error(value: float | None) -> str:
    return "" if finite(value) is None else f" (se {format_number(value)})"


def _update_lines(layers: Sequence[LayerResult]) -> list[str]:
    """What a LoRA adapter's updates are, and what their rank means for the fits."""
    ranks = sorted({layer.update_rank for layer in layers if layer.update_rank is not None})
    if not ranks:
        return []
    count = sum(layer.update_rank is not None for layer in layers)
    span = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
    return [f"LoRA updates: {_count(count, 'update')} scale * B A of {span}, solved from r x r products: each has "
            "at most r non-zero eigenvalues, so its tail fit is limited to them and its phase is rank-collapse by "
            "construction; --base MODEL compares the base and merged weights"]


def _evidence_lines(layers: Sequence[LayerResult]) -> list[str]:
    """One line per kind of optional evidence the layers hold (--vectors, --randomize, the tail tests)."""
    lines = []
    with_vectors = [layer.vectors for layer in layers if layer.vectors is not None]
    if with_vectors:
        tails = [v.tail for v in with_vectors if v.tail is not None]
        lines.append(f"eigenvectors: {sum(t.n_localised for t in tails)} of {sum(t.count for t in tails)} tail vectors "
                     f"localised beyond the Haar baseline, in {sum(t.n_localised > 0 for t in tails)} of "
                     f"{_count(len(with_vectors), 'layer')}")
    shuffled = [layer.randomized for layer in layers if layer.randomized is not None]
    if shuffled:
        lines.append(f"entries shuffled: {sum(bool(r.n_traps) for r in shuffled)} of {_count(len(shuffled), 'layer')} "
                     "with traps; "
                     f"the tail survives shuffling in {sum(bool(r.tail_survives) for r in shuffled)}")
    tests = [layer.tail_tests for layer in layers if layer.tail_tests is not None]
    if tests:
        parts = []
        with_p = [t.bootstrap_p for t in tests if t.bootstrap_p is not None]
        if with_p:
            parts.append(f"bootstrap p <= 0.1 (power law ruled out) in {sum(p <= 0.1 for p in with_p)} of {len(with_p)}")
        judged = [t for t in tests if t.verdict is not None]
        if judged:
            parts.append(", ".join(f"{label} {sum(t.verdict == name for t in judged)}" for name, label in
                                   (("power_law", "power law favoured"), ("alternative", "an alternative favoured"),
                                    ("inconclusive", "inconclusive"))))
        lines.append("tail tests: " + "; ".join(parts))
    windows = [layer.farms for layer in layers if layer.farms is not None]
    if windows:
        sizes = sorted({f.window for f in windows})
        cut = sum(f.window_cut for f in windows)
        lines.append(f"FARMS: {'window ' + str(sizes[0]) if len(sizes) == 1 else 'windows ' + ', '.join(map(str, sizes))} "
                     f"on a {windows[0].grid} x {windows[0].grid} grid, {_count(len(windows), 'layer')}"
                     + (f"; the window was cut to the layer in {cut}: those do not compare with the rest" if cut else ""))
    return lines


def _failures(layers: Sequence[LayerResult]) -> dict[str, list[str]]:
    return {
        "failed layers": [layer.name for layer in layers if layer.status != "success"],
        "failed tail fits": [layer.name for layer in layers if layer.status == "success"
                             and layer.power_law is not None and layer.power_law.status == "failed"],
    }


def _group_line(group: ExpertGroup) -> str:
    phases = ", ".join(f"{name} {count}" for name, count in group.phase_counts.items())
    alpha = (f"alpha mean {format_number(finite(group.alpha_mean))} (min {format_number(finite(group.alpha_min))}, "
             f"max {format_number(finite(group.alpha_max))})") if group.n_fitted else "no tail fits"
    return f"experts {group.name}: {group.n_experts} experts, {alpha}; phases: {phases or '-'}"


# For the CSV header of a report with no layers: only its keys are read (M = 1 keeps Q defined).
_EMPTY_LAYER = LayerResult(name="", tensor="", kind="", dtype="", shape=(0, 0), N=0, M=1, status="")
