"""From a Report to per-layer settings: which layers a method sets, their units, budgets held.

`advise_report(report, method, settings)` applies one method's rule (htmp_cli.advise.rules) to the
alphas of one estimator (htmp_cli.advise.estimators). Every analysed layer appears in the result
with a status:
- "fitted": its setting comes from its alpha (or its block's mean alpha);
- "neutral": it has no alpha (a failed fit, none by this estimator, or fewer than 50
  eigenvalues, too few to rank it against the others); it gets the method's
  neutral setting (the global sparsity, factor 1, the uniform rank share, the width nearest the
  average) and the reason, never a number from a failed fit;
- "left out": the method does not set it (embeddings and output heads; with block grouping, the
  layers outside the model's numbered blocks; TempBalance's and AlphaDecay's first and last layers
  and layers with fewer than 50 eigenvalues); it keeps the base setting (no pruning, factor 1, no
  rank, no quantisation).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from htmp_cli.advise import rules
from htmp_cli.advise.estimators import ESTIMATORS, layer_alpha
from htmp_cli.errors import OptionError
from htmp_cli.results import LayerResult, Report

SCHEMA = "htmp.advice/1"
METHODS = ("pruning", "lr", "weight-decay", "lora-rank", "bits")
GROUPINGS = ("layer", "block")
MIN_EIGENVALUES = 50  # AlphaDecay's eigs_thresh: fewer eigenvalues make no tail worth ranking


@dataclass(frozen=True)
class MethodSpec:
    """One method: the paper, the estimator and grouping its code uses, its parameters' defaults."""

    paper: str
    estimator: str
    grouping: str
    defaults: Mapping[str, Any]
    value: str  # what the setting is, for headers and the mapping


# The parameters of every method, with the defaults the papers publish (research-actions.md).
# "lr" / "weight_decay" None: the values are the factors. "total_rank" None: 8 per unit.
SPECS: dict[str, MethodSpec] = {
    "pruning": MethodSpec("AlphaPruning (Lu et al., NeurIPS 2024)", "peak", "block",
                          {"sparsity": 0.7, "epsilon": 0.3, "max_sparsity": 1.0}, "sparsity"),
    "lr": MethodSpec("TempBalance (Zhou et al., NeurIPS 2023)", "median", "layer",
                     {"lr": None, "min_ratio": 0.5, "max_ratio": 1.5}, "lr"),
    "weight-decay": MethodSpec("AlphaDecay (He et al., NeurIPS 2025)", "median", "layer",
                               {"weight_decay": None, "min_ratio": 0.6666, "max_ratio": 3.0}, "weight decay"),
    "lora-rank": MethodSpec("AlphaLoRA (Qing et al., EMNLP 2024)", "peak", "block",
                            {"total_rank": None, "power": 2.5, "min_rank": 1}, "rank"),
    "bits": MethodSpec("AlphaQ (arXiv 2606.04980)", "farms", "layer",
                       {"average_bits": 3.5, "bit_widths": (1, 2, 3, 4), "gamma": 1.0}, "bits"),
}
RANK_PER_UNIT = 8  # the default total rank is 8 per unit, peft's default r


@dataclass(frozen=True)
class LayerAdvice:
    name: str  # the analysed matrix, as the report names it
    module: str  # the module it belongs to (its tensor's name without ".weight"): the mapping's key
    kind: str
    params: int  # entries of the matrix (all its kernel positions for a conv)
    unit: str  # the layer or block whose alpha set it
    status: str  # "fitted", "neutral" or "left out"
    value: float  # the setting: sparsity, lr (or factor), weight decay (or factor), rank, bits
    alpha: float | None = None  # the unit's alpha (a block's mean) that set the value
    layer_alpha: float | None = None  # this layer's own alpha by the estimator
    factor: float | None = None  # lr and weight decay: the multiplier of the base
    reason: str | None = None  # why it is neutral or left out


@dataclass(frozen=True)
class Advice:
    """One method's settings for every analysed layer of one model."""

    method: str
    paper: str
    estimator: str
    grouping: str
    settings: dict[str, Any]  # the budget and the hyper-parameters, as used
    layers: tuple[LayerAdvice, ...]
    source: str
    notes: tuple[str, ...] = field(default=())

    @property
    def achieved(self) -> float | None:
        """The budget as the settings spend it: the parameter-weighted mean sparsity or bit width
        over the layers set (fitted and neutral), or the total rank; None for lr and weight decay."""
        chosen = [layer for layer in self.layers if layer.status != "left out"]
        if not chosen or self.method in ("lr", "weight-decay"):
            return None
        if self.method == "lora-rank":
            return float(sum({layer.unit: layer.value for layer in chosen}.values()))
        sizes = np.array([layer.params for layer in chosen], dtype=np.float64)
        return float((sizes * np.array([layer.value for layer in chosen])).sum() / sizes.sum())

    def mapping(self) -> dict[str, float | int]:
        """`{module: setting}` for every layer: the layer sparsities that AlphaPruning's scripts list,
        keyed by module; a peft `rank_pattern`; a bits map; per-module lr or weight decay (or their
        factors). The parts of a split matrix are keyed `module:part`."""
        integer = self.method in ("lora-rank", "bits")
        shared = {m for m, n in Counter(layer.module for layer in self.layers).items() if n > 1}
        # the parts of a split matrix (q/k/v, experts) each keep their own value, under their own name
        return {(_part_key(layer.name) if layer.module in shared else layer.module):
                (int(layer.value) if integer else float(layer.value)) for layer in self.layers
                if not (integer and layer.status == "left out")}

    def layer(self, name: str) -> LayerAdvice:
        for layer in self.layers:
            if name in (layer.name, layer.module):
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "method": self.method, "paper": self.paper, "estimator": self.estimator,
                "grouping": self.grouping, "settings": {k: (list(v) if isinstance(v, tuple) else v)
                                                        for k, v in self.settings.items()},
                "achieved": self.achieved, "source": self.source, "notes": list(self.notes),
                "layers": [asdict(layer) for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def resolve_settings(method: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """`method`'s parameters: its defaults updated with `given` (those not None); a parameter of
    another method is an error that names the method it belongs to."""
    if method not in SPECS:
        raise OptionError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    own = SPECS[method].defaults
    for name, value in given.items():
        if value is None:
            continue
        if name not in own:
            owners = [m for m, spec in SPECS.items() if name in spec.defaults]
            where = f"--for {' or '.join(owners)}" if owners else "no method"
            raise OptionError(f"{_flag(name)} applies to {where}, not to --for {method}")
    settings = {**own, **{k: v for k, v in given.items() if v is not None}}
    _check(method, settings)
    return settings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(method: str, s: dict[str, Any]) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise OptionError(message)

    if method == "pruning":
        need(0.0 <= s["max_sparsity"] <= 1.0, f"--max-sparsity must lie in [0, 1], got {s['max_sparsity']}")
        need(0.0 <= s["sparsity"] <= s["max_sparsity"],
             f"--sparsity must lie in [0, --max-sparsity {s['max_sparsity']}], got {s['sparsity']}")
        need(0.0 <= s["epsilon"] < 1.0, f"--epsilon must lie in [0, 1), got {s['epsilon']}")
    elif method in ("lr", "weight-decay"):
        base = "lr" if method == "lr" else "weight_decay"
        need(s[base] is None or s[base] >= 0, f"{_flag(base)} must be at least 0, got {s[base]}")
        need(0.0 < s["min_ratio"] <= s["max_ratio"],
             f"--min-ratio and --max-ratio need 0 < min <= max, got {s['min_ratio']} and {s['max_ratio']}")
    elif method == "lora-rank":
        need(s["min_rank"] >= 1, f"--min-rank must be at least 1, got {s['min_rank']}")
        need(s["total_rank"] is None or s["total_rank"] >= 1, f"--total-rank must be at least 1, got {s['total_rank']}")
        need(s["power"] >= 0, f"--power must be at least 0, got {s['power']}")
    elif method == "bits":
        widths = tuple(s["bit_widths"])
        need(len(widths) > 0 and all(isinstance(w, (int, np.integer)) and 1 <= w <= 64 for w in widths),
             f"--bit-widths must be whole numbers from 1 to 64, got {widths}")
        s["bit_widths"] = tuple(sorted(set(int(w) for w in widths)))
        need(s["average_bits"] >= s["bit_widths"][0],
             f"--average-bits {s['average_bits']} is below the smallest width, {s['bit_widths'][0]}")
        need(s["gamma"] >= 0, f"--gamma must be at least 0, got {s['gamma']}")


_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def block_of(name: str) -> str:
    """The block a layer belongs to: its name up to the first numbered component
    (`encoder.layer.3.attention.self.query` -> `encoder.layer.3`); a name without one is its own block."""
    match = _BLOCK.match(name)
    return match.group(1) if match else module_of(name)


def _part_key(name: str) -> str:
    base, _, part = name.partition(":")
    return f"{module_of(base)}:{part}" if part else module_of(base)


def module_of(name: str) -> str:
    return name.split(":", 1)[0].removesuffix(".weight")


def advise_report(report: Report, method: str, *, estimator: str | None = None, grouping: str | None = None,
                  settings: Mapping[str, Any] | None = None) -> Advice:
    """`method`'s settings for the layers of `report` (see the module's docstring)."""
    resolved = resolve_settings(method, settings or {})
    spec = SPECS[method]
    estimator = spec.estimator if estimator is None else estimator
    grouping = spec.grouping if grouping is None else grouping
    if estimator not in ESTIMATORS:
        raise OptionError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if grouping not in GROUPINGS:
        raise OptionError(f"--grouping must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
    analysed = [layer for layer in report.layers if layer.status == "success"]
    if estimator in ("median", "peak") and analysed and all(layer.eigenvalues is None for layer in analysed):
        raise OptionError(f"--estimator {estimator} needs the eigenvalues, which a saved report does not keep: "
                          "give the checkpoint, or --estimator csn (the report's own alpha)")
    if estimator == "farms" and analysed and all(layer.farms is None for layer in analysed):
        raise OptionError("--estimator farms needs FARMS fits: the report was analysed without --farms")
    entries = _entries(report.layers, method, estimator, grouping)
    layers, notes = _allocate(entries, method, resolved)
    if method == "lora-rank" and resolved["total_rank"] is None:
        resolved["total_rank"] = int(sum({a.unit: a.value for a in layers if a.status != "left out"}.values()))
    return Advice(method=method, paper=spec.paper, estimator=estimator, grouping=grouping, settings=resolved,
                  layers=tuple(layers), source=report.source.path, notes=tuple(notes))


@dataclass
class _Entry:
    layer: LayerResult
    params: int
    unit: str
    status: str
    alpha: float | None = None
    reason: str | None = None


def _entries(layers: tuple[LayerResult, ...], method: str, estimator: str, grouping: str) -> list[_Entry]:
    entries = []
    for layer in layers:
        params = int(layer.N) * int(layer.M) * int(layer.slices)
        unit = block_of(layer.name) if grouping == "block" else layer.name
        entry = _Entry(layer=layer, params=params, unit=unit, status="fitted")
        if layer.status != "success":
            entry.status, entry.reason = "neutral", f"no spectrum: {layer.reason}"
        elif layer.kind in ("embedding", "head"):
            entry.status, entry.reason = "left out", f"{'embedding' if layer.kind == 'embedding' else 'output head'}: " \
                                                     "the methods set linear and conv layers"
        entries.append(entry)
    if method in ("pruning", "lora-rank") and grouping == "block":
        # AlphaPruning and AlphaLoRA set the layers of the model's blocks (`model.layers`): not the
        # stem, pooler or head around them, whose outlying alphas would stretch every block's band.
        inside = [e for e in entries if e.status == "fitted" and _BLOCK.match(e.layer.name)]
        if inside:
            for e in entries:
                if e.status == "fitted" and not _BLOCK.match(e.layer.name):
                    e.status, e.reason = "left out", "outside the model's numbered blocks (--grouping layer sets it)"
    if method in ("lr", "weight-decay"):
        candidates = [e for e in entries if e.status == "fitted"]
        paper = "TempBalance" if method == "lr" else "AlphaDecay"
        for position, entry in ((0, candidates[:1]), (-1, candidates[-1:])):
            for e in entry:
                e.status, e.reason = "left out", f"{paper} leaves out the {'first' if position == 0 else 'last'} layer"
        for e in candidates:
            if e.status == "fitted" and e.layer.n_eigenvalues < MIN_EIGENVALUES:
                e.status, e.reason = "left out", (f"{e.layer.n_eigenvalues} eigenvalues: {paper} leaves out layers "
                                                  f"with fewer than {MIN_EIGENVALUES}")
    for e in entries:
        if e.status == "fitted" and e.layer.n_eigenvalues < MIN_EIGENVALUES:
            # A tail fit on a handful of eigenvalues ranks nothing: a 10-class head's "alpha" of 6
            # from its 10 eigenvalues had AlphaPruning remove the whole head (docs/advise.md).
            e.status, e.reason = "neutral", (f"{e.layer.n_eigenvalues} eigenvalues: fewer than the "
                                             f"{MIN_EIGENVALUES} an alpha needs to rank layers")
    for e in entries:
        if e.status != "fitted":
            continue
        estimate = layer_alpha(e.layer, estimator)
        if estimate.ok:
            e.alpha = estimate.alpha
        else:
            e.status, e.reason = "neutral", estimate.reason
    return entries


def _allocate(entries: list[_Entry], method: str, s: dict[str, Any]) -> tuple[list[LayerAdvice], list[str]]:
    fitted = [e for e in entries if e.status == "fitted"]
    neutral = [e for e in entries if e.status == "neutral"]
    units = list(dict.fromkeys(e.unit for e in fitted))
    members = {u: [e for e in fitted if e.unit == u] for u in units}
    unit_alpha = np.array([np.mean([e.alpha for e in members[u]]) for u in units])
    unit_size = np.array([sum(e.params for e in members[u]) for u in units], dtype=np.float64)
    notes: list[str] = []
    values: dict[str, float] = {}  # by unit
    neutral_values: dict[str, float] = {}  # by layer, where the neutral setting differs between layers
    factor_of: dict[str, float] = {}
    neutral_value: float
    left_out_value: float
    if method == "pruning":
        allocated = rules.alpha_pruning(unit_alpha, unit_size, s["sparsity"], s["epsilon"], s["max_sparsity"])
        values = dict(zip(units, allocated.tolist()))
        neutral_value, left_out_value = s["sparsity"], 0.0
        capped = [u for u in units if values[u] == s["max_sparsity"] and s["max_sparsity"] > s["sparsity"]]
        if capped:
            notes.append(f"{len(capped)} unit(s) capped at --max-sparsity {s['max_sparsity']}; the rest take up the budget")
    elif method in ("lr", "weight-decay"):
        base_name = "lr" if method == "lr" else "weight_decay"
        base = 1.0 if s[base_name] is None else float(s[base_name])
        factors = rules.linear_map(unit_alpha, s["min_ratio"], s["max_ratio"])
        factor_of = dict(zip(units, factors.tolist()))
        values = {u: base * f for u, f in factor_of.items()}
        neutral_value = left_out_value = base
    elif method == "lora-rank":
        n_units = len(units) + len(neutral)
        total = s["total_rank"] if s["total_rank"] is not None else RANK_PER_UNIT * n_units
        share = rules.uniform_share(total, n_units)
        if not units and neutral:  # no fit at all: equal shares, the total still spent exactly
            shares = rules.equal_shares(total, len(neutral))
            neutral_values = {e.layer.name: int(v) for e, v in zip(neutral, shares)}
        rest = total - share * len(neutral)
        if units and rest < s["min_rank"] * len(units):
            raise OptionError(f"--total-rank {total} leaves {rest} for {len(units)} fitted unit(s) after the "
                              f"neutral share {share} of {len(neutral)} layer(s) without a fit: give a larger total")
        values = dict(zip(units, rules.alpha_lora(unit_alpha, rest, s["power"], s["min_rank"]).tolist()))
        neutral_value, left_out_value = share, 0
    else:  # bits
        widths = s["bit_widths"]
        neutral_value, left_out_value = rules.neutral_width(s["average_bits"], widths), 0
        neutral_size = float(sum(e.params for e in neutral))
        total_size = neutral_size + float(unit_size.sum())
        if units:
            average = (s["average_bits"] * total_size - neutral_value * neutral_size) / float(unit_size.sum())
            if average < widths[0]:
                raise OptionError(f"--average-bits {s['average_bits']}: the layers without a fit take "
                                  f"{neutral_value} bits, leaving {average:.3f} on average for the rest, below "
                                  f"the smallest width {widths[0]}")
            variances = np.array([sum(e.layer.metrics.norm for e in members[u]) for u in units]) / unit_size
            values = dict(zip(units, rules.alpha_q(unit_alpha, variances, unit_size, average, widths,
                                                   s["gamma"]).tolist()))
    result = []
    alpha_by_unit = dict(zip(units, unit_alpha.tolist()))
    for e in entries:
        if e.status == "fitted":
            value, alpha, factor = values[e.unit], alpha_by_unit[e.unit], factor_of.get(e.unit)
        else:
            value = (neutral_values.get(e.layer.name, neutral_value) if e.status == "neutral" else left_out_value)
            alpha = None
            factor = 1.0 if method in ("lr", "weight-decay") else None
        result.append(LayerAdvice(name=e.layer.name, module=module_of(e.layer.name), kind=e.layer.kind,
                                  params=e.params, unit=e.unit if e.status == "fitted" else e.layer.name,
                                  status=e.status, value=value, alpha=alpha, layer_alpha=e.alpha, factor=factor,
                                  reason=e.reason))
    return result, notes
