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
from htmp_cli.scan.labels import SUMMARY_METRICS
from htmp_cli.scan.runner import ScanResult, ScanRow

EXPORT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def checkpoint_row(row: ScanRow, labels: dict[str, float | None] | None = None) -> dict[str, Any]:
    result = row.result
    summary = (result.report or {}).get("summary") or {}
    means = summary.get("means") or {}
    phases = summary.get("phase_counts") or {}
    return {
        "checkpoint": str(row.unit.path),
        "fingerprint": row.fingerprint,
        "status": result.status,
        "error": result.error,
        "format": ((result.report or {}).get("source") or {}).get("format"),
        "n_layers": summary.get("n_layers"),
        "n_failed_layers": summary.get("n_failed_layers"),
        "n_failed_fits": summary.get("n_failed_fits"),
        "n_skipped": summary.get("n_skipped"),
        **{f"mean_{name}": means.get(name) for name in SUMMARY_METRICS},
        **{f"phase_{name}": phases.get(name) for name in PHASE_LABELS},
        "seconds": result.seconds,
        **(labels or {}),
    }


def layer_rows(row: ScanRow) -> list[dict[str, Any]]:
    layers = (row.result.report or {}).get("layers") or []
    return [{"checkpoint": str(row.unit.path), "fingerprint": row.fingerprint, **flat_layer_row(layer)} for layer in layers]


def export(result: ScanResult, path: Path, per: str, labels: dict[int, dict[str, float | None]]) -> int:
    """Write the rows; returns how many were written."""
    kind = EXPORT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise HtmpError(f"--export {path}: the name must end in .csv or .jsonl (JSON Lines)")
    records: list[dict[str, Any]] = []
    for index, row in enumerate(result.rows):
        if per == "checkpoint":
            record = checkpoint_row(row, labels.get(index))
            if kind == "jsonl":
                report = row.result.report or {}
                record = {**record, "source": report.get("source"), "summary": report.get("summary")}
            records.append(record)
        elif kind == "jsonl":
            layers = (row.result.report or {}).get("layers") or []
            records += [{"checkpoint": str(row.unit.path), "fingerprint": row.fingerprint, **layer} for layer in layers]
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
