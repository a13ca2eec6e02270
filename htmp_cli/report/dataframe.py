"""A report as a pandas DataFrame: one row per layer, each number in a numeric column.

kappa is HTMP's kappa in the better-fitting orientation (its own column says which), the phase's
name and its reason are separate columns; docs/python.md lists every column.
"""

from __future__ import annotations

from typing import Any

from htmp_cli.errors import HtmpError
from htmp_cli.fits.tailtests import ALTERNATIVES
from htmp_cli.report.formats import VECTOR_PARTS, farms_fields, randomized_fields, tail_test_fields, vector_fields
from htmp_cli.results import LayerResult, Report

# (column, pandas dtype): floats are float64 (NaN where a fit failed), counts nullable integers.
COLUMNS = (
    ("name", "string"), ("tensor", "string"), ("kind", "string"), ("dtype", "string"), ("shape", "string"),
    ("N", "Int64"), ("M", "Int64"), ("Q", "float64"), ("slices", "Int64"), ("status", "string"),
    ("reason", "string"), ("aliases", "string"), ("update_rank", "Int64"),
    ("alpha", "float64"), ("alpha_sigma", "float64"), ("xmin", "float64"), ("xmax", "float64"), ("D", "float64"),
    ("tail_size", "Int64"), ("fit_status", "string"),
    ("alpha_weighted", "float64"), ("log_alpha_norm", "float64"), ("norm", "float64"), ("log_norm", "float64"),
    ("spectral_norm", "float64"), ("log_spectral_norm", "float64"), ("stable_rank", "float64"),
    ("entropy", "float64"), ("rank_loss", "Int64"), ("log_spread", "float64"),
    ("n_eigenvalues", "Int64"), ("n_zero", "Int64"),
    ("mp_sigma2", "float64"), ("mp_softrank", "float64"), ("n_spikes", "Int64"), ("ks_mp", "float64"),
    ("kappa", "float64"), ("kappa_orientation", "string"), ("kappa_at_bound", "string"), ("ks_htmp", "float64"),
    ("kappa_low", "float64"), ("kappa_high", "float64"), ("mp_sigma2_low", "float64"), ("mp_sigma2_high", "float64"),
    ("kappa_direct", "float64"), ("kappa_inverse", "float64"),
    ("phase", "string"), ("phase_reason", "string"), ("phase_rule", "string"), ("very_heavy", "boolean"),
    ("phase_htmp", "string"), ("views_agree", "boolean"),
    ("warnings", "string"),
    # --vectors (missing without it): per part of the spectrum, its vectors, the localised ones, their entropy z
    *((f"{part}_{suffix}", kind) for part in VECTOR_PARTS
      for suffix, kind in (("vectors", "Int64"), ("localised", "Int64"), ("entropy_z", "float64"))),
    # --randomize (missing without it)
    ("shuffled_traps", "Int64"), ("shuffled_alpha", "float64"), ("shuffled_ks", "float64"),
    ("tail_survives_shuffling", "boolean"),
    # --bootstrap, --alternatives (missing without them)
    ("bootstrap_p", "float64"), ("tail_verdict", "string"), ("tail_favoured", "string"),
    *((f"{kind}_{name}", "float64") for name in ALTERNATIVES for kind in ("R", "p")),
    # --farms (missing without it)
    ("farms_alpha", "float64"), ("farms_kappa", "float64"), ("farms_window", "Int64"),
)


def layer_row(layer: LayerResult) -> dict[str, Any]:
    """The row of one LayerResult (None where a value does not exist)."""
    fit, metrics, mp, phase, best = layer.power_law, layer.metrics, layer.mp, layer.phase, layer.htmp_best
    return {
        "name": layer.name, "tensor": layer.tensor, "kind": layer.kind, "dtype": layer.dtype,
        "shape": "x".join(str(d) for d in layer.shape), "N": layer.N, "M": layer.M, "Q": layer.Q,
        "slices": layer.slices, "status": layer.status, "reason": layer.reason,
        "aliases": ", ".join(layer.aliases) or None, "update_rank": layer.update_rank,
        "alpha": fit.alpha if fit else None, "alpha_sigma": fit.sigma if fit else None,
        "xmin": fit.xmin if fit else None, "xmax": fit.xmax if fit else None, "D": fit.D if fit else None,
        "tail_size": fit.tail_size if fit else None, "fit_status": fit.status if fit else None,
        **{key: getattr(metrics, key) if metrics else None for key in (
            "alpha_weighted", "log_alpha_norm", "norm", "log_norm", "spectral_norm", "log_spectral_norm",
            "stable_rank", "entropy", "rank_loss", "log_spread")},
        "n_eigenvalues": layer.n_eigenvalues, "n_zero": layer.n_zero,
        "mp_sigma2": mp.sigma2 if mp else None, "mp_softrank": mp.mp_softrank if mp else None,
        "n_spikes": mp.n_spikes if mp else None, "ks_mp": mp.ks_all if mp else None,
        "kappa": layer.kappa, "kappa_orientation": layer.kappa_orientation,
        "kappa_at_bound": best.at_bound if best else None, "ks_htmp": best.ks_htmp if best else None,
        "kappa_low": best.kappa_low if best else None, "kappa_high": best.kappa_high if best else None,
        "mp_sigma2_low": mp.sigma2_low if mp else None, "mp_sigma2_high": mp.sigma2_high if mp else None,
        "kappa_direct": layer.htmp.kappa if layer.htmp else None,
        "kappa_inverse": layer.htmp_inverse.kappa if layer.htmp_inverse else None,
        "phase": phase.phase if phase else None, "phase_reason": phase.summary if phase else None,
        "phase_rule": phase.rule if phase else None, "very_heavy": phase.very_heavy if phase else None,
        "phase_htmp": phase.htmp_phase if phase else None, "views_agree": phase.views_agree if phase else None,
        "warnings": ", ".join(layer.warnings) or None,
        **vector_fields(layer),
        **randomized_fields(layer),
        **tail_test_fields(layer),
        **farms_fields(layer),
    }


def layers_frame(report: Report) -> Any:
    pd = _pandas("Report.to_dataframe")
    rows = [layer_row(layer) for layer in report.layers]
    frame = pd.DataFrame(rows, columns=[name for name, _ in COLUMNS])
    return frame.astype({name: kind for name, kind in COLUMNS})


def history_frame(rows: list[tuple[int, float, LayerResult]]) -> Any:
    """(step, time, LayerResult) rows as a frame: `step` and `time` (seconds since the epoch), then
    the columns of `layers_frame`."""
    pd = _pandas("Monitor.history")
    columns = (("step", "Int64"), ("time", "float64"), *COLUMNS)
    frame = pd.DataFrame([{"step": step, "time": taken, **layer_row(layer)} for step, taken, layer in rows],
                         columns=[name for name, _ in columns])
    return frame.astype(dict(columns))


def _pandas(what: str) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise HtmpError(f"{what} needs pandas: pip install 'htmp-cli[pandas]' (or pandas)") from None
    return pd
