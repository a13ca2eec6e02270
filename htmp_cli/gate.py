"""Quality gates: rules over a report, from a configuration, to a verdict.

A rule bounds a per-layer metric, forbids phases or caps their share, or bounds a summary figure,
for the layers whose names match its pattern, with a severity and an optional reason. Rules come
from `htmp.toml` or `[tool.htmp]` in pyproject.toml (found from the current folder upward) or an
explicit file, on top of the built-in defaults unless the configuration turns them off. Everything
is validated before anything is computed: an unknown key, a wrong type or an impossible bound is a
ConfigError naming the key.

The gate reads typed Reports (htmp_cli.results), so a report written earlier by
`htmp analyze --format json` and read back is checked exactly as a fresh analysis is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from htmp_cli.errors import HtmpError
from htmp_cli.fits.phases import PHASE_LABELS
from htmp_cli.loaders.matrices import SkippedTensor, selection_reason, too_small
from htmp_cli.options import AnalysisOptions, OptionError
from htmp_cli.results import LAYER_METRICS, SUMMARY_MEANS, LayerResult, ModelSummary, Report
from htmp_cli.summary import summarize

SEVERITIES = ("error", "warning")
SCOPES = ("all", "hidden")
CONFIG_FILE = "htmp.toml"
# The heavy-tailed phase with alpha below 2 (PhaseThresholds.alpha_very_heavy) on an accepted tail:
# the one meaning of "very heavy-tailed", in `analyze`'s summary and in rules.
VERY_HEAVY = "very heavy-tailed"
RULE_PHASES = PHASE_LABELS + (VERY_HEAVY,)

# Hidden layers are those the built-in rules judge. Embeddings and output heads are trained by
# other signals (token frequencies, the label set) and are often heavy-tailed or random-like in
# healthy models; an unused pooler stays at its initialisation; fewer than HIDDEN_MIN_EIGENVALUES
# eigenvalues are too few for a tail or a bulk to be evidence.
HIDDEN_MIN_EIGENVALUES = 32
_POOLER = re.compile(r"(^|[._])pooler([._]|$)", re.IGNORECASE)


def layer_role(layer: LayerResult) -> str:
    """"hidden", or why a layer is not: embedding, output head, pooler, too few eigenvalues."""
    if layer.kind == "embedding":
        return "embedding"
    if layer.kind == "head":
        return "output head"
    if _POOLER.search(layer.name):
        return "pooler"
    # A pooled conv kernel has M eigenvalues per slice: its count, not its side, is the evidence.
    count = layer.n_eigenvalues or min(layer.N, layer.M) * layer.slices
    if count < HIDDEN_MIN_EIGENVALUES:
        return f"under {HIDDEN_MIN_EIGENVALUES} eigenvalues"
    return "hidden"


def layer_phases(layer: LayerResult) -> tuple[str, ...]:
    """The phase names a rule can match for a layer: its phase, and "very heavy-tailed" where it is."""
    phase = layer.phase
    if phase is None:
        return ()
    return (phase.phase, VERY_HEAVY) if phase.very_heavy else (phase.phase,)


class ConfigError(HtmpError):
    """A configuration that cannot be applied; exit 2 before anything is computed."""


@dataclass(frozen=True)
class Rule:
    """One check. Exactly one of `metric` (with `min`/`max`), `forbid_phases`, `phase` (with
    `max_share`), `summary` (with `min`/`max`) or `failed` says what is checked."""

    name: str
    severity: str = "error"
    reason: str | None = None
    layers: str | None = None  # regex (re.search) on layer names; None: every layer
    metric: str | None = None
    summary: str | None = None
    min: float | None = None
    max: float | None = None
    forbid_phases: tuple[str, ...] = ()
    phase: str | None = None
    max_share: float | None = None
    failed: bool = False  # layers whose analysis failed
    scope: str = "all"  # "hidden": only the layers `layer_role` calls hidden
    steps: str = "last"  # over a training run: judged at its last step, or at "any" step

    @property
    def what(self) -> str:
        if self.failed:
            return "no failed analyses"
        if self.forbid_phases:
            return "no layer in phase " + " or ".join(self.forbid_phases)
        if self.phase is not None:
            return f"share of {self.phase} layers <= {self.max_share:g}"
        subject = self.metric or f"summary {self.summary}"
        bounds = [f">= {self.min:g}" if self.min is not None else "", f"<= {self.max:g}" if self.max is not None else ""]
        return f"{subject} " + " and ".join(b for b in bounds if b)


DEFAULT_RULES = (
    Rule(name="failed-analysis", failed=True,
         reason="a matrix with NaN or Inf entries, or all zeros, has no spectrum: the checkpoint is broken"),
    Rule(name="rank-collapse", forbid_phases=("rank-collapse",), scope="hidden",
         reason="the layer has lost rank: part of it carries no signal"),
    Rule(name="random-like", forbid_phases=("random-like",), scope="hidden",
         reason="the layer's spectrum is still that of random noise: it looks untrained"),
    Rule(name="very-heavy-tailed", forbid_phases=(VERY_HEAVY,), scope="hidden", severity="warning",
         reason="alpha below 2 on a well-fitted tail, which Martin and Mahoney associate with over-training; "
                "common in the attention projections of healthy language models"),
    Rule(name="mostly-very-heavy-tailed", phase=VERY_HEAVY, max_share=0.5, scope="hidden",
         reason="most hidden layers very heavy-tailed: the signature of a diverged run or of fitting noise"),
)
# Said when rules for hidden layers found none to judge: their passing would mean nothing.
NO_HIDDEN_LAYERS = Rule(name="no-hidden-layers", summary="n_layers", severity="warning", min=0.0,
                        reason="every analysed layer is an embedding, output head, pooler or too small for the "
                               "hidden-layer rules; check.defaults_scope = \"all\" holds them to every layer")
# Fails every check, defaults or not: a verdict on no layers would pass anything.
NOTHING_ANALYSED = Rule(name="nothing-analysed", summary="n_layers", min=1.0,
                        reason="no matrix was analysed, so no rule could look at any; check the selection "
                               "(--include, --exclude, --min-dim) or the file")


@dataclass(frozen=True)
class DriftRule:
    """How far a per-layer metric may move from a baseline report (`max_abs`, `max_rel` or both);
    with no metric, the rule is about the layer set: layers that appear or vanish."""

    name: str
    metric: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    severity: str = "error"
    reason: str | None = None
    layers: str | None = None

    @property
    def what(self) -> str:
        if self.metric is None:
            return "same layers as the baseline"
        bounds = [f"|change| <= {self.max_abs:g}" if self.max_abs is not None else "",
                  f"|change| <= {self.max_rel:g} x baseline" if self.max_rel is not None else ""]
        return f"{self.metric} drift " + " and ".join(b for b in bounds if b)


# Used with --baseline when the configuration names no drift rules.
DEFAULT_DRIFT_RULES = (
    DriftRule(name="alpha-drift", metric="alpha", max_abs=1.0,
              reason="a layer's tail exponent moved by more than 1 from the baseline"),
    DriftRule(name="layers-changed", severity="warning",
              reason="the checkpoint's layers differ from the baseline's: is it the same architecture?"),
)


@dataclass(frozen=True)
class TrendRule:
    """Over a training run: a layer metric (for each layer) or a summary figure must have moved in
    `direction` ("falling" or "rising") from the first analysed step to the last, by `min_change`
    at least (0: any move that way, or none)."""

    name: str
    direction: str
    metric: str | None = None
    summary: str | None = None
    min_change: float = 0.0
    severity: str = "error"
    reason: str | None = None
    layers: str | None = None

    @property
    def what(self) -> str:
        subject = self.metric or f"summary {self.summary}"
        by = f" by {self.min_change:g} or more" if self.min_change else ""
        return f"{subject} {self.direction} over the run{by}"


@dataclass(frozen=True)
class GateConfig:
    """A validated configuration: the rules, the drift rules, the trend rules (for training runs),
    and the analysis options it sets."""

    rules: tuple[Rule, ...]
    drift_rules: tuple[DriftRule, ...] | None  # None: the defaults, if a baseline is given
    analysis: dict[str, Any]
    trend_rules: tuple[TrendRule, ...] = ()


@dataclass(frozen=True)
class Violation:
    rule: Rule | DriftRule
    layer: str | None  # None for a rule on the whole model
    value: float | str | None
    message: str

    @property
    def text(self) -> str:
        """The message, after the layer's name where it is about one."""
        return self.message if self.layer is None else f"{self.layer}: {self.message}"


@dataclass(frozen=True)
class Verdict:
    rules: tuple[Rule | DriftRule, ...]
    violations: tuple[Violation, ...]
    checked_layers: dict[str, int] = field(default_factory=dict)  # rule name -> layers it applied to
    # rule name -> which layers it looked at, in words ("36 hidden layers; not held to it: 2 embedding")
    looked_at: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.rule.severity == "error")

    @property
    def warnings(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.rule.severity == "warning")

    @property
    def passed(self) -> bool:
        return not self.errors


# --- configuration ------------------------------------------------------------------------------

_RULE_KEYS = {"name", "severity", "reason", "layers", "metric", "summary", "min", "max", "forbid_phases", "phase",
              "max_share", "failed", "scope", "steps"}
_CHECK_KEYS = {"defaults", "defaults_scope", "rules", "drift", "trend"}
_TREND_KEYS = {"name", "metric", "summary", "direction", "min_change", "severity", "reason", "layers"}
STEPS = ("last", "any")
DIRECTIONS = ("falling", "rising")
_DRIFT_KEYS = {"name", "metric", "max_abs", "max_rel", "severity", "reason", "layers"}
_TOP_KEYS = {"check", "analysis"}


def find_config(start: Path) -> Path | None:
    """htmp.toml, or a pyproject.toml with a [tool.htmp] table, in `start` or a folder above it."""
    for folder in (start, *start.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "htmp" in _read_toml(pyproject).get("tool", {}):
            return pyproject
    return None


def configuration(path: Path | None, start: Path, no_defaults: bool = False) -> tuple[GateConfig, str]:
    """The validated configuration of `path`, or of the one found from `start` upward, or of none
    (the built-in rules); and how to name it in messages."""
    found = path if path is not None else find_config(start)
    settings = load_config(found) if found is not None else {}
    if no_defaults:
        settings = {**settings, "check": {**settings.get("check", {}), "defaults": False}}
    where = str(found or "built-in rules")
    return parse_config(settings, where), where


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None


def load_config(path: Path) -> dict[str, Any]:
    """The htmp table of a configuration file: the whole of htmp.toml, or [tool.htmp] of a pyproject."""
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("htmp", {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [tool.htmp] must be a table")
    return data


def parse_config(config: dict[str, Any], where: str) -> GateConfig:
    """Validate a configuration (the htmp table) completely, before anything is computed."""
    unknown = set(config) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    analysis = config.get("analysis", {})
    if not isinstance(analysis, dict):
        raise ConfigError(f"{where}: 'analysis' must be a table")
    check = config.get("check", {})
    drift = check.get("drift") if isinstance(check, dict) else None
    if drift is not None and not isinstance(drift, list):
        raise ConfigError(f"{where}: check.drift must be an array of tables ([[check.drift]])")
    drift_rules = None if drift is None else tuple(parse_drift(e, f"{where}: check.drift[{k}]") for k, e in enumerate(drift))
    trend = check.get("trend", []) if isinstance(check, dict) else []
    if not isinstance(trend, list):
        raise ConfigError(f"{where}: check.trend must be an array of tables ([[check.trend]])")
    trend_rules = tuple(parse_trend(e, f"{where}: check.trend[{k}]") for k, e in enumerate(trend))
    rules = rules_from_config(config, where)
    names = [r.name for r in rules] + [r.name for r in drift_rules or ()] + [r.name for r in trend_rules]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"{where}: two rules are named {duplicate!r} (a rule replacing a default needs "
                          "check.defaults = false, or another name)")
    return GateConfig(rules=rules, drift_rules=drift_rules, analysis=analysis_options(analysis, f"{where}: analysis"),
                      trend_rules=trend_rules)


def analysis_options(table: dict[str, Any], where: str) -> dict[str, Any]:
    """AnalysisOptions fields from an [analysis] table, checked by AnalysisOptions itself."""
    file, _, name = where.rpartition(": ")
    try:
        options = AnalysisOptions.from_mapping(table, table=name)
    except OptionError as err:
        raise ConfigError(f"{file}: {err}") from None
    return {key: getattr(options, key) for key in table}


def _rule_header(entry: object, where: str, known: set[str]) -> tuple[dict, str, str, str]:
    """What every rule table starts with: a table of known keys, a name, a severity."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(entry) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
    name = _string(entry, "name", where)
    if not name:
        raise ConfigError(f"{where}.name is required")
    where = f"{where} ({name!r})"
    severity = _string(entry, "severity", where) or "error"
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}.severity must be error or warning, got {severity!r}")
    return entry, name, where, severity


def parse_drift(entry: object, where: str) -> DriftRule:
    entry, name, where, severity = _rule_header(entry, where, _DRIFT_KEYS)
    metric = _string(entry, "metric", where)
    if metric is not None and metric not in LAYER_METRICS:
        raise ConfigError(f"{where}: unknown metric {metric!r} (metrics: {', '.join(LAYER_METRICS)})")
    max_abs, max_rel = _number(entry, "max_abs", where), _number(entry, "max_rel", where)
    for key, value in (("max_abs", max_abs), ("max_rel", max_rel)):
        if value is not None and value < 0:
            raise ConfigError(f"{where}.{key} must be at least 0, got {value:g}")
    if metric is not None and max_abs is None and max_rel is None:
        raise ConfigError(f"{where}: a drift rule on {metric} needs max_abs, max_rel or both")
    if metric is None and (max_abs is not None or max_rel is not None):
        raise ConfigError(f"{where}: max_abs and max_rel need a metric (a rule without one checks the layer set)")
    return DriftRule(name=name, metric=metric, max_abs=max_abs, max_rel=max_rel, severity=severity,
                     reason=_string(entry, "reason", where), layers=_layer_pattern(entry, where))


def parse_trend(entry: object, where: str) -> TrendRule:
    entry, name, where, severity = _rule_header(entry, where, _TREND_KEYS)
    metric, summary = _string(entry, "metric", where), _string(entry, "summary", where)
    if (metric is None) == (summary is None):
        raise ConfigError(f"{where}: a trend rule follows exactly one of metric or summary")
    if metric is not None and metric not in LAYER_METRICS:
        raise ConfigError(f"{where}: unknown metric {metric!r} (metrics: {', '.join(LAYER_METRICS)})")
    if summary is not None and summary not in SUMMARY_FIGURES:
        raise ConfigError(f"{where}: unknown summary figure {summary!r} (figures: {', '.join(SUMMARY_FIGURES)})")
    direction = _string(entry, "direction", where)
    if direction is None:
        raise ConfigError(f"{where}.direction is required: falling or rising")
    if direction not in DIRECTIONS:
        raise ConfigError(f"{where}.direction must be falling or rising, got {direction!r}")
    change = _number(entry, "min_change", where) or 0.0
    if change < 0:
        raise ConfigError(f"{where}.min_change must be at least 0, got {change:g}")
    return TrendRule(name=name, direction=direction, metric=metric, summary=summary, min_change=change,
                     severity=severity, reason=_string(entry, "reason", where), layers=_layer_pattern(entry, where))


def _layer_pattern(entry: dict, where: str) -> str | None:
    layers = _string(entry, "layers", where)
    if layers is not None:
        try:
            re.compile(layers)
        except re.error as err:
            raise ConfigError(f"{where}.layers {layers!r} is not a valid regular expression: {err}") from None
    return layers


def rules_from_config(config: dict[str, Any], where: str) -> tuple[Rule, ...]:
    """The rules a configuration asks for (defaults included unless `check.defaults = false`)."""
    check = config.get("check", {})
    if not isinstance(check, dict):
        raise ConfigError(f"{where}: 'check' must be a table")
    unknown = set(check) - _CHECK_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key check.{sorted(unknown)[0]} (known: {', '.join(sorted(_CHECK_KEYS))})")
    defaults = check.get("defaults", True)
    if not isinstance(defaults, bool):
        raise ConfigError(f"{where}: check.defaults must be true or false, got {defaults!r}")
    entries = check.get("rules", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: check.rules must be an array of tables ([[check.rules]])")
    rules = [parse_rule(entry, f"{where}: check.rules[{k}]") for k, entry in enumerate(entries)]
    scope = check.get("defaults_scope", "hidden")
    if scope not in SCOPES:
        raise ConfigError(f"{where}: check.defaults_scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    built_in = [r if r.scope == "all" else replace(r, scope=scope) for r in DEFAULT_RULES] if defaults else []
    return tuple(built_in + rules)


def _number(entry: dict, key: str, where: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}.{key} must be a finite number, got {value!r}")
    return float(value)


def _string(entry: dict, key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string, got {value!r}")
    return value


def parse_rule(entry: object, where: str) -> Rule:
    entry, name, where, severity = _rule_header(entry, where, _RULE_KEYS)
    layers = _layer_pattern(entry, where)
    low, high = _number(entry, "min", where), _number(entry, "max", where)
    if low is not None and high is not None and low > high:
        raise ConfigError(f"{where}: min {low:g} is above max {high:g}, no value can pass")
    forbid = entry.get("forbid_phases", [])
    if not isinstance(forbid, list) or not all(isinstance(p, str) for p in forbid):
        raise ConfigError(f"{where}.forbid_phases must be a list of phase names")
    phase = _string(entry, "phase", where)
    for p in [*forbid, *([phase] if phase else [])]:
        if p not in RULE_PHASES:
            raise ConfigError(f"{where}: unknown phase {p!r} (phases: {', '.join(RULE_PHASES)})")
    scope = _string(entry, "scope", where) or "all"
    if scope not in SCOPES:
        raise ConfigError(f"{where}.scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    max_share = _number(entry, "max_share", where)
    if max_share is not None and not 0 <= max_share <= 1:
        raise ConfigError(f"{where}.max_share must lie in [0, 1], got {max_share:g}")
    failed = entry.get("failed", False)
    if not isinstance(failed, bool):
        raise ConfigError(f"{where}.failed must be true or false")
    steps = _string(entry, "steps", where) or "last"
    if steps not in STEPS:
        raise ConfigError(f"{where}.steps must be last or any (which steps of a training run it judges), got {steps!r}")
    metric, summary = _string(entry, "metric", where), _string(entry, "summary", where)
    if metric is not None and metric not in LAYER_METRICS:
        raise ConfigError(f"{where}: unknown metric {metric!r} (metrics: {', '.join(LAYER_METRICS)})")
    if summary is not None and summary not in SUMMARY_FIGURES:
        raise ConfigError(f"{where}: unknown summary figure {summary!r} (figures: {', '.join(SUMMARY_FIGURES)})")
    kinds = [k for k, present in (("metric", metric), ("summary", summary), ("forbid_phases", forbid),
                                  ("phase", phase), ("failed", failed)) if present]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: a rule checks exactly one of metric, summary, forbid_phases, phase or failed "
                          f"(found {', '.join(kinds) or 'none'})")
    if kinds[0] in ("metric", "summary") and low is None and high is None:
        raise ConfigError(f"{where}: a {kinds[0]} rule needs min, max or both")
    if kinds[0] == "phase" and max_share is None:
        raise ConfigError(f"{where}: a phase rule needs max_share")
    if kinds[0] not in ("metric", "summary") and (low is not None or high is not None):
        raise ConfigError(f"{where}: min and max apply only to metric and summary rules")
    return Rule(name=name, severity=severity, reason=_string(entry, "reason", where), layers=layers, metric=metric,
                summary=summary, min=low, max=high, forbid_phases=tuple(forbid), phase=phase, max_share=max_share,
                failed=failed, scope=scope, steps=steps)


# --- evaluation -----------------------------------------------------------------------------------

def _summary_figures() -> dict[str, Callable[[ModelSummary], float | None]]:
    figures: dict[str, Callable[[ModelSummary], float | None]] = {
        "n_layers": lambda s: s.n_layers, "n_failed_layers": lambda s: s.n_failed_layers,
        "n_failed_fits": lambda s: s.n_failed_fits, "n_skipped": lambda s: s.n_skipped,
    }
    for name in SUMMARY_MEANS:
        figures[f"mean_{name}"] = lambda s, name=name: s.means.get(name)
    return figures


SUMMARY_FIGURES = _summary_figures()


def _selected(rule: Rule | DriftRule, layers: tuple[LayerResult, ...]) -> list[LayerResult]:
    chosen = list(layers)
    if rule.layers is not None:
        pattern = re.compile(rule.layers)
        chosen = [layer for layer in chosen if pattern.search(layer.name)]
    if isinstance(rule, Rule) and rule.scope == "hidden":
        chosen = [layer for layer in chosen if layer_role(layer) == "hidden"]
    return chosen


def _looked_at(rule: Rule, layers: tuple[LayerResult, ...], chosen: list[LayerResult]) -> str:
    if rule.summary is not None:
        return "the model summary"
    words = f"{len(chosen)} {'hidden ' if rule.scope == 'hidden' else ''}layer{'' if len(chosen) == 1 else 's'}"
    if rule.layers is not None:
        words += f" matching {rule.layers!r}"
    if rule.scope == "hidden":
        left: dict[str, int] = {}
        pattern = re.compile(rule.layers) if rule.layers is not None else None
        for layer in layers:
            role = layer_role(layer)
            if role != "hidden" and (pattern is None or pattern.search(layer.name)):
                left[role] = left.get(role, 0) + 1
        if left:
            # a fixed order (embedding, output head, pooler, tiny), whatever the checkpoint's order
            order = ["embedding", "output head", "pooler"]
            ranked = sorted(left.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))
            words += "; not held to it: " + ", ".join(f"{n} {role}" for role, n in ranked)
    return words


def _out_of_bounds(value: float, rule: Rule) -> bool:
    return (rule.min is not None and value < rule.min) or (rule.max is not None and value > rule.max)


def _finite(value: float | None) -> float | None:
    """A figure a bound can judge: NaN and infinity, which the JSON form writes as null, are no
    evidence either way, in a fresh analysis as in a saved one."""
    return float(value) if value is not None and math.isfinite(value) else None


def _metric(name: str, layer: LayerResult) -> float | None:
    return _finite(LAYER_METRICS[name].of(layer)) if layer.status == "success" else None


def evaluate(report: Report, rules: tuple[Rule, ...]) -> Verdict:
    """Apply rules to a report."""
    violations: list[Violation] = []
    checked: dict[str, int] = {}
    looked_at: dict[str, str] = {}
    layers = report.layers
    if not layers:
        rules = (NOTHING_ANALYSED, *rules)
        violations.append(Violation(NOTHING_ANALYSED, None, 0.0, "nothing was checked: no matrix was analysed "
                                    f"({len(report.skipped)} tensors skipped)"))
    for rule in rules:
        if rule is NOTHING_ANALYSED:
            checked[rule.name], looked_at[rule.name] = 0, "the whole checkpoint"
            continue
        chosen = _selected(rule, layers)
        checked[rule.name] = len(chosen)
        looked_at[rule.name] = _looked_at(rule, layers, chosen)
        if rule.failed:
            violations += [Violation(rule, layer.name, layer.reason, f"analysis failed: {layer.reason}")
                           for layer in chosen if layer.status != "success"]
        elif rule.forbid_phases:
            for layer in chosen:
                hit = next((p for p in layer_phases(layer) if p in rule.forbid_phases), None)
                if hit is not None and layer.phase is not None:
                    violations.append(Violation(rule, layer.name, hit, layer.phase.summary or hit))
        elif rule.phase is not None:
            ok = [layer for layer in chosen if layer.status == "success"]
            hits = [layer.name for layer in ok if rule.phase in layer_phases(layer)]
            share = len(hits) / len(ok) if ok else 0.0
            if share > rule.max_share:
                violations.append(Violation(rule, None, share, f"{len(hits)} of {len(ok)} layers ({share:.0%}) are "
                                            f"{rule.phase}: {', '.join(hits[:5])}{' ...' if len(hits) > 5 else ''}"))
        elif rule.metric is not None:
            for layer in chosen:
                value = _metric(rule.metric, layer)
                if value is not None and _out_of_bounds(value, rule):
                    violations.append(Violation(rule, layer.name, value, f"{rule.metric} = {value:.4g}"))
        else:
            value = _finite(SUMMARY_FIGURES[rule.summary](report.summary))
            if value is not None and _out_of_bounds(value, rule):
                violations.append(Violation(rule, None, value, f"{rule.summary} = {value:.4g}"))
    idle = [r.name for r in rules if r.scope == "hidden" and r.summary is None]
    if layers and idle and not any(layer_role(layer) == "hidden" for layer in layers):
        rules = (*rules, NO_HIDDEN_LAYERS)
        checked[NO_HIDDEN_LAYERS.name], looked_at[NO_HIDDEN_LAYERS.name] = len(layers), f"{len(layers)} layers"
        violations.append(Violation(NO_HIDDEN_LAYERS, None, None, f"no hidden layer for {', '.join(idle)}: "
                                    f"{len(layers)} layers, none judged by them"))
    return Verdict(rules=rules, violations=tuple(violations), checked_layers=checked, looked_at=looked_at)


def evaluate_drift(report: Report, baseline: Report, rules: tuple[DriftRule, ...]) -> Verdict:
    """Compare a report with a baseline report of the same architecture, layer by layer."""
    old = {layer.name: layer for layer in baseline.layers}
    new = {layer.name: layer for layer in report.layers}
    if not new:  # nothing analysed: `evaluate` fails the check and says so; no drift to measure
        return Verdict(rules=(), violations=())
    if not set(old) & set(new):
        raise HtmpError("the baseline shares no layer names with this checkpoint: not the same architecture")
    violations: list[Violation] = []
    checked: dict[str, int] = {}
    looked_at: dict[str, str] = {}
    for rule in rules:
        if rule.metric is None:
            appeared = [name for name in new if name not in old]
            vanished = [name for name in old if name not in new]
            checked[rule.name] = len(set(old) | set(new))
            looked_at[rule.name] = f"{checked[rule.name]} layers of the checkpoint and the baseline"
            violations += [Violation(rule, name, None, "not in the baseline") for name in appeared]
            violations += [Violation(rule, name, None, "in the baseline, not here") for name in vanished]
            continue
        common = [layer for layer in _selected(rule, report.layers) if layer.name in old]
        checked[rule.name] = len(common)
        looked_at[rule.name] = f"{len(common)} layers in both" + (f" matching {rule.layers!r}" if rule.layers else "")
        for layer in common:
            a, b = _metric(rule.metric, old[layer.name]), _metric(rule.metric, layer)
            if a is None or b is None:
                continue
            change = b - a
            too_far = (rule.max_abs is not None and abs(change) > rule.max_abs) or (
                rule.max_rel is not None and abs(change) > rule.max_rel * abs(a))
            if too_far:
                violations.append(Violation(rule, layer.name, change,
                                            f"{rule.metric} {a:.4g} -> {b:.4g} ({change:+.4g})"))
    return Verdict(rules=rules, violations=tuple(violations), checked_layers=checked, looked_at=looked_at)


def combine(*verdicts: Verdict) -> Verdict:
    return Verdict(rules=tuple(r for v in verdicts for r in v.rules),
                   violations=tuple(x for v in verdicts for x in v.violations),
                   checked_layers={k: n for v in verdicts for k, n in v.checked_layers.items()},
                   looked_at={k: n for v in verdicts for k, n in v.looked_at.items()})


# --- a saved report under a selection ------------------------------------------------------------

# The analysis options that choose layers, and so apply to a saved report as to a checkpoint.
SELECTION_OPTIONS = ("min_dim", "skip_embeddings", "include", "exclude")


def _selection_reason(layer: LayerResult, include: list[re.Pattern], exclude: list[re.Pattern],
                      options: AnalysisOptions) -> str | None:
    """The loader's own reasons (htmp_cli.loaders.matrices), applied to a layer already analysed."""
    reason = selection_reason(layer.tensor or layer.name, include, exclude)
    if reason is not None:
        return reason
    if options.skip_embeddings and layer.kind in ("embedding", "head"):
        return f"{'embedding' if layer.kind == 'embedding' else 'output head'} left out by --skip-embeddings"
    return too_small(layer.shape, options.min_dim)


def select_layers(report: Report, options: AnalysisOptions) -> Report:
    """A saved report as if analysed with `options`' selection (SELECTION_OPTIONS): the layers left
    out join `skipped` with the reason, and the summary is recomputed, so that checking the report
    gives the verdict that checking the checkpoint gives."""
    include = [re.compile(p) for p in options.include]
    exclude = [re.compile(p) for p in options.exclude]
    kept: list[LayerResult] = []
    dropped: dict[str, SkippedTensor] = {}  # by tensor: the parts of one tensor are one skipped entry
    for layer in report.layers:
        reason = _selection_reason(layer, include, exclude, options)
        if reason is None:
            kept.append(layer)
        else:
            tensor = layer.tensor or layer.name
            dropped.setdefault(tensor, SkippedTensor(name=tensor, shape=layer.shape, dtype=layer.dtype, reason=reason))
    if not dropped:
        return report
    layers, skipped = tuple(kept), (*report.skipped, *dropped.values())
    # The summary of the layers kept, by the definitions of a fresh analysis (htmp_cli.summary).
    summary = summarize(layers, skipped, report.summary.timings, report.summary.workers)
    return replace(report, layers=layers, skipped=skipped, summary=summary)
