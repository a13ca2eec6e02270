"""Scan results as flat rows: one per checkpoint or one per layer, written as CSV or JSON Lines."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from htmp_cli.errors import HtmpError
from htmp_cli.fits.phases import PHASE_LABELS
from htmp_cli.report.formats import flat_layer_row
from htmp_cli.results import LayerResult, layer_to_dict
from htmp_cli.scan.labels import SUMMARY_METRICS
from htmp_cli.scan.runner import ScanResult, ScanRow

EXPORT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def checkpoint_row(row: ScanRow, labels: dict[str, float | None] | None = None) -> dict[str, Any]:
    result = row.result
    report = result.report
    summary = report.summary if report is not None else None
    means = summary.means if summary is not None else {}
    phases = summary.phase_counts if summary is not None else {}
    return {
        "checkpoint": str(row.unit.path),
        "fingerprint": row.fingerprint,
        "status": result.status,
        "error": result.error,
        "format": report.source.format if report is not None else None,
        "n_layers": summary.n_layers if summary is not None else None,
        "n_failed_layers": summary.n_failed_layers if summary is not None else None,
        "n_failed_fits": summary.n_failed_fits if summary is not None else None,
        "n_skipped": summary.n_skipped if summary is not None else None,
        **{f"mean_{name}": means.get(name) for name in SUMMARY_METRICS},
        **{f"phase_{name}": phases.get(name) for name in PHASE_LABELS},
        "seconds": result.seconds,
        **(labels or {}),
    }


def _layers(row: ScanRow) -> tuple[LayerResult, ...]:
    return row.result.report.layers if row.result.report is not None else ()


def layer_rows(row: ScanRow) -> list[dict[str, Any]]:
    return [{"checkpoint": str(row.unit.path), "fingerprint": row.fingerprint, **flat_layer_row(layer)}
            for layer in _layers(row)]


def export(result: ScanResult, path: Path, per: str, labels: dict[int, dict[str, float | None]]) -> int:
    """Write the rows; returns how many were written."""
    kind = EXPORT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise HtmpError(f"--export {path}: the name must end in .csv or .jsonl (JSON Lines)")
    records: list[dict[str, Any]] = []
    for index, row in enumerate(result.rows):
        if per == "checkpoint":
            record = checkpoint_row(row, labels.get(index))
            if kind == "jsonl":  # the report's own JSON form of these two, as `htmp analyze -f json` writes them
                data = row.result.report.to_dict() if row.result.report is not None else {}
                record = {**record, "source": data.get("source"), "summary": data.get("summary")}
            records.append(record)
        elif kind == "jsonl":
            records += [{"checkpoint": str(row.unit.path), "fingerprint": row.fingerprint, **layer_to_dict(layer)}
                        for layer in _layers(row)]
        else:
            records += layer_rows(row)
    if kind == "jsonl":
        text = "".join(json.dumps(record) + "\n" for record in records)
    else:
        out = io.StringIO()
        fields = list(dict.fromkeys(key for record in records for key in record)) or ["checkpoint"]
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = out.getvalue()
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise HtmpError(f"--export {path}: cannot write: {err.strerror or err}") from None
    return len(records)
