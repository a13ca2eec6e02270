"""Named per-layer figures read from a layer's JSON form (htmp.report/2): one reading for gates and diffs."""

from __future__ import annotations

from typing import Callable


def _fit(key: str) -> Callable[[dict], float | None]:
    return lambda layer: (layer.get("power_law") or {}).get(key) if (layer.get("power_law") or {}).get("status") == "success" else None


def _metric(key: str) -> Callable[[dict], float | None]:
    return lambda layer: (layer.get("metrics") or {}).get(key)


def _mp(key: str) -> Callable[[dict], float | None]:
    return lambda layer: (layer.get("mp") or {}).get(key) if (layer.get("mp") or {}).get("status") == "success" else None


def _kappa(layer: dict) -> float | None:
    htmp = layer.get("htmp") or {}
    best = htmp.get(htmp.get("best") or "") or {}
    return best.get("kappa")


# Per-layer metrics a rule can bound, by the name used in configurations.
LAYER_METRICS: dict[str, Callable[[dict], float | None]] = {
    "alpha": _fit("alpha"), "D": _fit("D"), "sigma": _fit("sigma"), "xmin": _fit("xmin"),
    "tail_size": _fit("tail_size"),
    **{name: _metric(name) for name in ("alpha_weighted", "log_alpha_norm", "norm", "log_norm", "spectral_norm",
                                        "log_spectral_norm", "stable_rank", "entropy", "rank_loss", "log_spread")},
    "kappa": _kappa, "spikes": _mp("n_spikes"), "mp_softrank": _mp("mp_softrank"), "ks_mp": _mp("ks_all"),
    "n_zero": lambda layer: layer.get("n_zero"),
}
