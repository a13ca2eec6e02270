"""The results of an analysis, and their JSON contract (design.md section 3).

Every command, reporter and client reads results through this module: the per-layer and summary
types, the schema name, and the one writer and reader of the JSON form.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from htmp_cli.fits.farms import FarmsResult
from htmp_cli.fits.htmp import HTMPFit, better_fit
from htmp_cli.fits.metrics import ScaleMetrics
from htmp_cli.fits.mp import MPFit
from htmp_cli.errors import HtmpError
from htmp_cli.fits.phases import PhaseResult
from htmp_cli.fits.powerlaw import PowerLawFit
from htmp_cli.fits.randomize import RandomizationResult
from htmp_cli.fits.tailtests import TailTests
from htmp_cli.fits.vectors import VectorEvidence
from htmp_cli.loaders.matrices import SkippedTensor
from htmp_cli.options import AnalysisOptions


@dataclass(frozen=True)
class LayerTimings:
    read: float
    eigen: float
    fit: float


@dataclass(frozen=True)
class LayerResult:
    """Everything htmp knows about one analysed matrix."""

    name: str
    tensor: str
    kind: str
    dtype: str
    shape: tuple[int, int]
    N: int
    M: int
    status: str  # "success", or "failed" when no spectrum could be computed
    reason: str | None = None
    slices: int = 1  # conv kernel positions whose eigenvalues are pooled
    group: str | None = None  # the expert group (stacked tensor or experts.*. name) of an expert
    note: str | None = None  # how the matrix was cut from its tensor, when that needs saying
    aliases: tuple[str, ...] = ()  # other names of the same tensor (tied weights), analysed once
    update_rank: int | None = None  # a LoRA update scale * B A: its rank r (at most r non-zero eigenvalues)
    precision: str | None = None
    backend: str | None = None
    n_eigenvalues: int = 0
    n_zero: int = 0
    n_clamped: int = 0
    power_law: PowerLawFit | None = None
    metrics: ScaleMetrics | None = None
    mp: MPFit | None = None
    htmp: HTMPFit | None = None  # direct orientation: lambda / scale ~ HTMP
    htmp_inverse: HTMPFit | None = None  # inverse orientation: scale / lambda ~ HTMP
    phase: PhaseResult | None = None
    warnings: tuple[str, ...] = ()
    timings: LayerTimings = field(default_factory=lambda: LayerTimings(0.0, 0.0, 0.0))
    vectors: VectorEvidence | None = None  # eigenvector localisation (--vectors)
    randomized: RandomizationResult | None = None  # against its entries shuffled (--randomize)
    tail_tests: TailTests | None = None  # the tail's bootstrap p-value and alternatives (--bootstrap, --alternatives)
    farms: FarmsResult | None = None  # alpha and kappa of the pooled ESD of square windows (--farms)
    # The spectrum itself, kept only when asked (figures need it; reports and the JSON do not), and
    # with --vectors each eigenvalue's eigenvector IPR.
    eigenvalues: np.ndarray | None = field(default=None, repr=False, compare=False)
    vector_ipr: np.ndarray | None = field(default=None, repr=False, compare=False)
    shuffled_eigenvalues: np.ndarray | None = field(default=None, repr=False, compare=False)  # with --randomize

    @property
    def Q(self) -> float:
        return self.N / self.M

    @property
    def alpha(self) -> float | None:
        return self.power_law.alpha if self.power_law is not None else None

    @property
    def kappa(self) -> float | None:
        """HTMP's kappa in the orientation that fits better (`kappa_orientation`): the one kappa
        the table, the gate, the summary mean and the DataFrame show."""
        best = self.htmp_best
        return best.kappa if best is not None else None

    @property
    def kappa_orientation(self) -> str | None:
        best = self.htmp_best
        return best.orientation if best is not None else None

    @property
    def htmp_best(self) -> HTMPFit | None:
        """The HTMP orientation with the smaller KS distance (None if neither fit)."""
        return better_fit(self.htmp, self.htmp_inverse)


@dataclass(frozen=True)
class SourceInfo:
    path: str
    format: str
    files: tuple[str, ...]
    size_bytes: int
    fingerprint: str
    notes: tuple[str, ...] = ()  # what the loader found and did: folder choice, wrappers removed, ...
    architecture: str | None = None  # a GGUF file's general.architecture


@dataclass(frozen=True)
class ExpertGroup:
    """The experts of one mixture-of-experts layer, summarised together."""

    name: str
    n_experts: int
    n_fitted: int
    alpha_mean: float | None
    alpha_min: float | None
    alpha_max: float | None
    phase_counts: dict[str, int]


@dataclass(frozen=True)
class ModelSummary:
    n_layers: int
    n_failed_layers: int
    n_failed_fits: int
    n_skipped: int
    means: dict[str, float | None]  # over successful layers (alpha-based: successful fits only)
    warning_counts: dict[str, int]
    phase_counts: dict[str, int]
    worrying: dict[str, list[str]]  # rank-collapse, random-like and very heavy-tailed layers by name
    timings: dict[str, float]
    kind_counts: dict[str, int] = field(default_factory=dict)
    expert_groups: tuple[ExpertGroup, ...] = ()
    workers: int = 1  # processes that analysed layers (2 with a fitting process); timings are summed over them
    # The standard error of each mean over layers: sd / sqrt(count), None with fewer than two values.
    standard_errors: dict[str, float | None] = field(default_factory=dict)
    # Layers per phase in the HTMP view (PhaseResult.htmp_phase), and the layers where the views differ.
    htmp_phase_counts: dict[str, int] = field(default_factory=dict)
    views_disagree: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """The analysis of one checkpoint: its layers, the tensors left out and why, the model summary.

    `to_json` / `Report.from_json` round-trip exactly (the eigenvalues, which the JSON does not
    hold, aside); `to_dataframe` gives one row per layer; `plot` and `plot_overview` return
    matplotlib Figures without touching pyplot, the backend or rcParams.
    """

    htmp_version: str
    source: SourceInfo
    options: AnalysisOptions
    layers: tuple[LayerResult, ...]
    skipped: tuple[SkippedTensor, ...]
    summary: ModelSummary

    def layer(self, name: str) -> LayerResult:
        """The layer of this name (or of one of its aliases); KeyError naming the nearest names."""
        for layer in self.layers:
            if layer.name == name or name in layer.aliases:
                return layer
        import difflib

        near = difflib.get_close_matches(name, [layer.name for layer in self.layers], n=3)
        raise KeyError(f"no layer {name!r}" + (f"; did you mean {', '.join(map(repr, near))}?" if near else ""))

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract (design.md section 3) as plain Python values."""
        return report_to_dict(self)

    def to_json(self, path: str | Path | None = None, indent: int | None = 2) -> str:
        """The JSON text; written to `path` as well when one is given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return report_from_dict(data)

    @classmethod
    def from_json(cls, text_or_path: str | bytes | Path) -> Report:
        """A report from its JSON text (a str or bytes starting with '{') or from a file holding it
        (a Path, or a str that is not JSON text: `htmp analyze -f json -o FILE`)."""
        if isinstance(text_or_path, bytes):
            text_or_path = text_or_path.decode("utf-8")
        if isinstance(text_or_path, str) and text_or_path.lstrip()[:1] in ("{", "["):
            try:
                return report_from_dict(json.loads(text_or_path))
            except json.JSONDecodeError as err:
                raise HtmpError(f"not JSON ({err})") from None
        return read_report(text_or_path)

    def to_dataframe(self) -> Any:
        """One row per layer, numbers as numbers (pandas, the `pandas` extra); see docs/python.md."""
        from htmp_cli.report.dataframe import layers_frame

        return layers_frame(self)

    def plot(self, layer: str | LayerResult) -> Any:
        """The ESD of one layer with its fitted power law, MP and HTMP densities (a matplotlib Figure)."""
        from htmp_cli.report.plots import esd_figure

        chosen = layer if isinstance(layer, LayerResult) else self.layer(layer)
        if chosen.eigenvalues is None:
            raise HtmpError(f"{chosen.name}: this report holds no eigenvalues (a report read from JSON, or one "
                            "analysed without them): analyse the checkpoint with htmp_cli.analyze to draw its ESD")
        return esd_figure(chosen)

    def plot_overview(self) -> Any:
        """Alpha and kappa per layer in network order, coloured by phase (a matplotlib Figure)."""
        from htmp_cli.report.plots import overview_figure

        return overview_figure(self.layers, self.source.path)

    def _repr_html_(self) -> str:
        from htmp_cli.report.notebook import report_html

        return report_html(self)


@dataclass(frozen=True)
class Metric:
    """One per-layer number, by the name rules, diffs, scans and the summary use, with its meaning.

    It lives at `section.key` of a layer (`section` None: on the layer itself); where the section
    is a fit with a status, the number exists only when the fit succeeded.
    """

    name: str
    meaning: str
    section: str | None
    key: str

    def of(self, layer: LayerResult) -> float | None:
        if self.name == "kappa":
            return layer.kappa
        part = layer if self.section is None else getattr(layer, self.section)
        if part is None or getattr(part, "status", "success") != "success":
            return None
        return getattr(part, self.key)


def _metrics(*rows: tuple[str, str | None, str, str]) -> dict[str, Metric]:
    return {name: Metric(name, meaning, section, key) for name, section, key, meaning in rows}


# Every per-layer metric, once (docs/python.md and the README's JSON section say the same).
LAYER_METRICS: dict[str, Metric] = _metrics(
    ("alpha", "power_law", "alpha", "exponent of the power law fitted to the spectrum's tail"),
    ("D", "power_law", "D", "KS distance of the tail to its fitted power law"),
    ("sigma", "power_law", "sigma", "standard error of alpha"),
    ("xmin", "power_law", "xmin", "where the fitted tail starts"),
    ("tail_size", "power_law", "tail_size", "eigenvalues in the fitted tail"),
    ("alpha_weighted", "metrics", "alpha_weighted", "alpha * log10(lambda_max)"),
    ("log_alpha_norm", "metrics", "log_alpha_norm", "log10 of the sum of lambda^alpha"),
    ("norm", "metrics", "norm", "sum of the eigenvalues: the squared Frobenius norm"),
    ("log_norm", "metrics", "log_norm", "log10 of norm"),
    ("spectral_norm", "metrics", "spectral_norm", "the largest eigenvalue, lambda_max"),
    ("log_spectral_norm", "metrics", "log_spectral_norm", "log10 of lambda_max"),
    ("stable_rank", "metrics", "stable_rank", "norm / lambda_max"),
    ("entropy", "metrics", "entropy", "normalised spectral entropy"),
    ("rank_loss", "metrics", "rank_loss", "eigenvalues at numerical zero"),
    ("log_spread", "metrics", "log_spread", "ln(arithmetic / geometric mean) of the non-zero eigenvalues"),
    ("kappa", "htmp", "kappa", "HTMP's eigenvalue repulsion, of the orientation that fits better"),
    ("spikes", "mp", "n_spikes", "eigenvalues above the Marchenko-Pastur bulk's Tracy-Widom edge"),
    ("mp_softrank", "mp", "mp_softrank", "lambda_plus / lambda_max"),
    ("ks_mp", "mp", "ks_all", "KS distance of every eigenvalue to the fitted Marchenko-Pastur law"),
    ("n_zero", None, "n_zero", "eigenvalues below the numerical-zero threshold"),
    ("tail_localised", "vectors", "tail_localised", "tail eigenvectors localised beyond the Haar baseline (--vectors)"),
    ("tail_entropy_z", "vectors", "tail_entropy_z", "z-score of the tail eigenvectors' mean entropy against Haar (--vectors)"),
    ("traps", "randomized", "n_traps", "eigenvalues of the shuffled matrix beyond its MP edge (--randomize)"),
    ("shuffled_alpha", "randomized", "alpha", "alpha of the shuffled matrix's spectrum (--randomize)"),
    ("shuffled_ks", "randomized", "ks_distance", "KS distance between the spectra of W and of W shuffled (--randomize)"),
    ("bootstrap_p", "tail_tests", "bootstrap_p", "goodness-of-fit p-value of the power-law tail (--bootstrap)"),
    ("farms_alpha", "farms", "alpha", "alpha of the pooled ESD of square windows (--farms)"),
    ("farms_kappa", "farms", "kappa", "HTMP kappa (gamma = 1) of the pooled ESD of square windows (--farms)"),
)
# The metrics the summary averages; those of the tail fit over the layers whose fit succeeded,
# the others over every analysed layer (htmp_cli.summary).
SUMMARY_MEANS = ("alpha", "D", "alpha_weighted", "log_alpha_norm", "log_norm", "log_spectral_norm", "stable_rank",
                 "entropy", "rank_loss", "log_spread", "kappa", "mp_softrank")
FIT_MEANS = ("alpha", "D", "alpha_weighted", "log_alpha_norm")


SCHEMA = "htmp.report/3"
# /2 (2026-12-01): layers gained `aliases`; summary.means.kappa is over each layer's better HTMP
# orientation (in /1, the direct one's). A /1 report reads as /2: no aliases, its mean kappa recomputed.
# /3 (2026-12-01): layers gained the evidence sections, null when not asked for: `vectors`
# (eigenvector localisation), `randomized` (against the shuffled matrix), `tail_tests` (bootstrap
# p-value, likelihood-ratio tests), `farms` (alpha and kappa of pooled square windows); HTMP fits
# gained kappa_low/kappa_high, MP fits sigma2_low/sigma2_high, the summary standard_errors. A /2 report reads as /3 with none of them.
# Later in /3: source.architecture (a GGUF file's, else null); `update_rank`, the rank of a LoRA adapter's update (null for weights; absent reads as null).
READABLE_SCHEMAS = ("htmp.report/1", "htmp.report/2", SCHEMA)


def is_report(data: object) -> bool:
    """Whether parsed JSON is an htmp report of a schema this version reads."""
    return isinstance(data, dict) and data.get("schema") in READABLE_SCHEMAS


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: such a value becomes null (it never reaches a mean)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def layer_to_dict(layer: LayerResult) -> dict[str, Any]:
    """One layer's JSON form (non-finite numbers become null), as a report's `layers` hold it."""
    return _clean({
        "name": layer.name,
        "tensor": layer.tensor,
        "kind": layer.kind,
        "dtype": layer.dtype,
        "shape": list(layer.shape),
        "N": layer.N,
        "M": layer.M,
        "Q": layer.Q,
        "status": layer.status,
        "reason": layer.reason,
        "slices": layer.slices,
        "group": layer.group,
        "note": layer.note,
        "aliases": list(layer.aliases),
        "update_rank": layer.update_rank,
        "precision": layer.precision,
        "backend": layer.backend,
        "n_eigenvalues": layer.n_eigenvalues,
        "n_zero": layer.n_zero,
        "n_clamped": layer.n_clamped,
        "power_law": asdict(layer.power_law) if layer.power_law is not None else None,
        "metrics": asdict(layer.metrics) if layer.metrics is not None else None,
        "mp": asdict(layer.mp) if layer.mp is not None else None,
        "htmp": {
            "direct": asdict(layer.htmp) if layer.htmp is not None else None,
            "inverse": asdict(layer.htmp_inverse) if layer.htmp_inverse is not None else None,
            "best": layer.kappa_orientation,
        },
        "phase": asdict(layer.phase) if layer.phase is not None else None,
        "warnings": list(layer.warnings),
        "timings": asdict(layer.timings),
        "vectors": asdict(layer.vectors) if layer.vectors is not None else None,
        "randomized": asdict(layer.randomized) if layer.randomized is not None else None,
        "tail_tests": asdict(layer.tail_tests) if layer.tail_tests is not None else None,
        "farms": asdict(layer.farms) if layer.farms is not None else None,
    })


def report_to_dict(report: Report) -> dict[str, Any]:
    """The JSON form of a report (design.md section 3): non-finite numbers become null."""
    return _clean({
        "schema": SCHEMA,
        "htmp_version": report.htmp_version,
        "source": asdict(report.source),
        "options": report.options.to_dict(),
        "layers": [layer_to_dict(layer) for layer in report.layers],
        "skipped": [asdict(s) for s in report.skipped],
        "summary": asdict(report.summary),
    })


def report_from_dict(data: dict[str, Any]) -> Report:
    """A report read back from its JSON form; raises HtmpError when it is not one."""
    if not is_report(data):
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise HtmpError(f"not an htmp report: expected schema {' or '.join(map(repr, READABLE_SCHEMAS))}, "
                        f"found {found!r}")
    try:
        layers = tuple(layer_from_dict(layer) for layer in data["layers"])
        summary = _decode(ModelSummary, data["summary"])
        if data["schema"] == "htmp.report/1":  # its mean kappa was the direct orientation's: now the /2 one
            summary = replace(summary, means={**summary.means, "kappa": mean_metric("kappa", layers)})
        if data["schema"] != SCHEMA:  # before /3 a summary held no standard errors: they follow from the layers
            summary = replace(summary, standard_errors={name: mean_standard_error(name, layers) for name in SUMMARY_MEANS})
        return Report(
            htmp_version=data["htmp_version"],
            source=_decode(SourceInfo, data["source"]),
            options=_decode(AnalysisOptions, data["options"]),
            layers=layers,
            skipped=tuple(_decode(SkippedTensor, s) for s in data["skipped"]),
            summary=summary,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise HtmpError(f"not a readable htmp report: {type(err).__name__}: {err}") from None


def summary_values(name: str, layers: tuple[LayerResult, ...]) -> list[float]:
    """The values a summary mean (SUMMARY_MEANS) is taken over: the finite ones of the successful
    layers, or for the FIT_MEANS of those whose tail fit succeeded."""
    chosen = [layer for layer in layers if layer.status == "success"]
    if name in FIT_MEANS:
        chosen = [layer for layer in chosen if layer.power_law is not None and layer.power_law.ok]
    return [v for v in (LAYER_METRICS[name].of(layer) for layer in chosen) if v is not None and math.isfinite(v)]


def mean_metric(name: str, layers: tuple[LayerResult, ...]) -> float | None:
    """A summary mean (SUMMARY_MEANS) over `summary_values`; None where there are none."""
    present = summary_values(name, layers)
    return float(np.mean(present)) if present else None


def mean_standard_error(name: str, layers: tuple[LayerResult, ...]) -> float | None:
    """The standard error of that mean across layers (sample sd / sqrt(count)); None below two values."""
    present = summary_values(name, layers)
    return float(np.std(present, ddof=1) / math.sqrt(len(present))) if len(present) >= 2 else None


def layer_from_dict(data: dict[str, Any]) -> LayerResult:
    """One layer read back from its JSON form (the inverse of layer_to_dict)."""
    htmp = data.get("htmp") or {}
    plain = {k: v for k, v in data.items() if k not in ("Q", "htmp")}
    plain["htmp"] = htmp.get("direct")
    plain["htmp_inverse"] = htmp.get("inverse")
    return _decode(LayerResult, plain)


def _decode(kind: Any, value: Any) -> Any:
    """`value`, read from JSON, as an instance of the annotated type `kind` (dataclasses field by field)."""
    return _decoder(kind)(value)


@functools.lru_cache(maxsize=None)
def _decoder(kind: Any) -> Callable[[Any], Any]:
    """The function that decodes JSON values of type `kind`, built once per type: a report's layers
    all share it, so a store of thousands of reports reads back at the speed of its JSON."""
    missing = None if _optional(kind) else math.nan  # a non-finite float was written as null
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        decode = _decoder(inner[0]) if len(inner) == 1 else _identity
    elif is_dataclass(kind):
        hints, known = _fields_of(kind)
        field_decoders = {name: _decoder(hints[name]) for name in known}
        name_of = kind.__name__

        def decode(value: Any) -> Any:
            try:
                return kind(**{name: field_decoders[name](item) for name, item in value.items()})
            except KeyError:
                unknown = sorted(set(value) - known)
                if not unknown:
                    raise
                raise ValueError(f"{name_of} has no field {unknown[0]!r}") from None
    elif origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _decoder(args[0])

            def decode(value: Any) -> Any:
                return tuple(item(v) for v in value)
        else:
            items = [_decoder(arg) for arg in args]

            def decode(value: Any) -> Any:
                return tuple(d(v) for d, v in zip(items, value))
    elif origin is dict:
        value_decoder = _decoder(typing.get_args(kind)[1])

        def decode(value: Any) -> Any:
            return {key: value_decoder(v) for key, v in value.items()}
    elif origin is list:
        list_item = _decoder(typing.get_args(kind)[0])

        def decode(value: Any) -> Any:
            return [list_item(v) for v in value]
    elif kind is float:
        def decode(value: Any) -> Any:
            return float(value) if isinstance(value, int) else value
    else:
        decode = _identity

    def decode_or_missing(value: Any) -> Any:
        return missing if value is None else decode(value)

    return decode_or_missing


def _identity(value: Any) -> Any:
    return value


@functools.lru_cache(maxsize=None)
def _fields_of(kind: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A dataclass's resolved annotations and its init fields (resolved once: every layer reads them)."""
    return typing.get_type_hints(kind), frozenset(f.name for f in fields(kind) if f.init)


def _optional(kind: Any) -> bool:
    return kind is Any or (typing.get_origin(kind) in (typing.Union, types.UnionType)
                           and type(None) in typing.get_args(kind))


def is_report_file(path: str | Path) -> bool:
    """A file written by `htmp analyze --format json` (or `Report.to_json`), told by its first bytes;
    any other JSON is left to the loaders, which say what it looks like."""
    candidate = Path(path)
    if candidate.name.endswith(".index.json") or not candidate.is_file():
        return False
    try:
        with open(candidate, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    from htmp_cli.loaders import starts_an_htmp_report

    if starts_an_htmp_report(head):
        return True
    if candidate.suffix != ".json" or head.lstrip()[:1] != b"{":
        return False
    try:  # a report whose keys were reordered (json.dump(sort_keys=True)) puts its schema last
        return is_report(json.loads(candidate.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def read_report(path: str | Path) -> Report:
    """A report saved by `htmp analyze --format json` (or `Report.to_json`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise HtmpError(f"{path}: cannot read: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HtmpError(f"{path}: not JSON ({err})") from None
    try:
        return report_from_dict(data)
    except HtmpError as err:
        raise HtmpError(f"{path}: {err}") from None
