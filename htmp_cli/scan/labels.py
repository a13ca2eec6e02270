"""Quality labels for a scan (`--labels FILE`) and their rank correlations with the summary metrics.

The CSV has a header; its first column names the checkpoint (a path, relative to the CSV's folder or
the current one, or a file or folder name without its extension) and every other column is a number
such as test accuracy. Correlations are computed here, as pure functions of the numbers.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from htmp_cli.errors import HtmpError
from htmp_cli.results import SUMMARY_MEANS

# The model-level figures correlated with labels: the summary means of htmp.report/3.
SUMMARY_METRICS = SUMMARY_MEANS
MIN_PAIRS = 3
# Up to this many checkpoints Spearman's p-value is exact (all n! pairings); scipy's t approximation
# above it. The approximation calls a perfect ranking of 4 checkpoints p = 0; the truth is 1/12.
EXACT_SPEARMAN_MAX = 9


@dataclass(frozen=True)
class Labels:
    columns: tuple[str, ...]
    values: dict[str, dict[str, float | None]]  # checkpoint cell -> column -> value
    source: Path


@dataclass(frozen=True)
class Correlation:
    """Rank correlation of one summary metric with one label over the checkpoints having both."""

    metric: str
    label: str
    n: int
    spearman_rho: float
    spearman_p: float
    kendall_tau: float
    kendall_p: float

    @property
    def strength(self) -> float:
        return abs(self.spearman_rho) if math.isfinite(self.spearman_rho) else -1.0


def read_labels(path: Path) -> Labels:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise HtmpError(f"--labels {path}: cannot read: {err}") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise HtmpError(f"--labels {path}: expected a header (checkpoint, label, ...) and at least one row")
    header = [cell.strip() for cell in rows[0]]
    columns = tuple(header[1:])
    if len(set(columns)) != len(columns) or not all(columns):
        raise HtmpError(f"--labels {path}: label columns must have distinct, non-empty names ({', '.join(columns)})")
    values: dict[str, dict[str, float | None]] = {}
    for number, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise HtmpError(f"--labels {path}, line {number}: {len(row)} cells, the header has {len(header)}")
        name = row[0].strip()
        if name in values:
            raise HtmpError(f"--labels {path}, line {number}: checkpoint {name!r} appears twice")
        parsed: dict[str, float | None] = {}
        for column, cell in zip(columns, row[1:]):
            cell = cell.strip()
            if cell == "" or cell.lower() in ("na", "nan", "none", "null"):
                parsed[column] = None
                continue
            try:
                parsed[column] = float(cell)
            except ValueError:
                raise HtmpError(f"--labels {path}, line {number}: {column} = {cell!r} is not a number") from None
        values[name] = parsed
    return Labels(columns=columns, values=values, source=path)


def match_labels(labels: Labels, checkpoints: list[Path]) -> tuple[dict[int, dict[str, float | None]], list[str]]:
    """Label rows for checkpoints (by position in `checkpoints`), and the label rows that matched none."""
    by_path = {p.resolve(): k for k, p in enumerate(checkpoints)}
    by_name: dict[str, list[int]] = {}
    for k, p in enumerate(checkpoints):
        for name in {p.name, p.stem, p.name.removesuffix(".index.json")}:
            by_name.setdefault(name, []).append(k)
    matched: dict[int, dict[str, float | None]] = {}
    unmatched = []
    for cell, row in labels.values.items():
        hits = {by_path[c] for c in ((labels.source.parent / cell).resolve(), Path(cell).resolve()) if c in by_path}
        if not hits and len(by_name.get(cell, [])) == 1:
            hits = set(by_name[cell])
        if len(hits) == 1:
            matched[hits.pop()] = row
        else:
            unmatched.append(cell)
    return matched, unmatched


def _pearson(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    return (a * b).sum(axis=axis) / np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))


def _exact_spearman_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of Spearman's rho over every pairing of the ranks (ties keep their mid-ranks)."""
    from scipy import stats

    fixed = stats.rankdata(x)
    # One sample: its n! orderings against the fixed ranks of x (two samples would pair n!^2 times).
    result = stats.permutation_test((stats.rankdata(y),), lambda b, axis=-1: _pearson(fixed, b, axis),
                                    permutation_type="pairings", n_resamples=np.inf, vectorized=True,
                                    alternative="two-sided")
    return float(result.pvalue)


def correlations(metrics: list[dict[str, float | None]], labels: list[dict[str, float | None]],
                 columns: tuple[str, ...]) -> list[Correlation]:
    """Spearman and Kendall correlation of every metric with every label, strongest first."""
    from scipy import stats

    found = []
    for label in columns:
        for metric in SUMMARY_METRICS:
            pairs = [(m.get(metric), y.get(label)) for m, y in zip(metrics, labels)]
            pairs = [(float(x), float(y)) for x, y in pairs
                     if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
            if len(pairs) < MIN_PAIRS:
                continue
            x, y = np.array(pairs).T
            if np.ptp(x) == 0 or np.ptp(y) == 0:
                rho = p_rho = tau = p_tau = math.nan  # a constant has no ranking
            else:
                rho, p_rho = stats.spearmanr(x, y)
                if len(pairs) <= EXACT_SPEARMAN_MAX:
                    p_rho = _exact_spearman_p(x, y)
                tau, p_tau = stats.kendalltau(x, y)  # exact for small samples without ties (scipy's "auto")
            found.append(Correlation(metric=metric, label=label, n=len(pairs), spearman_rho=float(rho),
                                     spearman_p=float(p_rho), kendall_tau=float(tau), kendall_p=float(p_tau)))
    return sorted(found, key=lambda c: -c.strength)
