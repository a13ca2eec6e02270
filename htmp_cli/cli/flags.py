"""The analysis flags, declared once: the options of every command that analyses, and how they
become AnalysisOptions."""

from __future__ import annotations

import functools
import inspect
import typing
from enum import Enum
from typing import Callable, Optional

import typer

from htmp_cli.cli.common import fail
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions

class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


class ListFormat(str, Enum):
    table = "table"
    json = "json"


class Precision(str, Enum):
    float64 = "float64"
    float32 = "float32"


class FitMethod(str, Enum):
    csn = "csn"
    ww = "ww"


class Backend(str, Enum):
    auto = "auto"
    numpy = "numpy"
    torch = "torch"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ConvMode(str, Enum):
    pooled = "pooled"
    unfold = "unfold"


PATH_HELP = ("A checkpoint: .safetensors, PyTorch .pt/.pth/.bin, .gguf, a shard index, "
              "or a folder holding one (Hugging Face or llama.cpp layout).")
MIN_DIM = typer.Option(10, "--min-dim", help="Smallest side of a matrix to analyse (10 = the default min-tail).")
CONV = typer.Option(ConvMode.pooled, "--conv",
                     help="Conv kernels: pooled = eigenvalues of the (out, in) slices pooled into one ESD; "
                          "unfold = the (out, in*kernel) matrix.")
SPLIT_FUSED = typer.Option(False, "--split-fused",
                            help="Split fused q/k/v projections (c_attn, qkv_proj, Wqkv, ...) into q, k and v where the shape allows.")
PRECISION = typer.Option(Precision.float64, "--precision", help="Gram product and eigensolver precision; float32 is faster.")
FIT = typer.Option(FitMethod.csn, "--fit", help="csn: Clauset-Shalizi-Newman fit; ww: WeightWatcher 0.7.7's fit, reproduced.")
SKIP_EMBEDDINGS = typer.Option(False, "--skip-embeddings", help="Leave embeddings and output heads out.")
INCLUDE = typer.Option([], "--include", metavar="REGEX", help="Analyse only tensors whose name matches (repeatable).")
EXCLUDE = typer.Option([], "--exclude", metavar="REGEX", help="Leave out tensors whose name matches (repeatable).")
MIN_TAIL = typer.Option(10, "--min-tail", help="Smallest tail the csn fit may choose.")
BACKEND = typer.Option(Backend.auto, "--backend", help="Eigensolver: numpy, torch, or auto (torch from a smaller side of 1024, if installed).")
DEVICE = typer.Option(Device.auto, "--device",
                       help="Where spectra are computed: cuda = torch on the GPU (exit 2 without one); auto = the GPU "
                            "for matrices with a side of 1024 or more when torch sees one, else the CPU; cpu.")
JOBS = typer.Option(None, "--jobs", "-j", min=1,
                     help="Processes analysing layers in parallel, one BLAS thread each (default: the usable cores "
                          "when the checkpoint is large enough to gain; a mid-sized one is fitted in a second "
                          "process while this one solves; 1: this process alone).")
HTMP_FIT = typer.Option(True, "--htmp/--no-htmp", help="Fit the HTMP law (both orientations) to every layer.")
THRESHOLD = typer.Option([], "--threshold", metavar="NAME=VALUE",
                          help="Override a phase-rule threshold (repeatable); see the README for the names.")
VECTORS = typer.Option(False, "--vectors",
                        help="Eigenvector localisation against the random baseline, for the tail, spikes and bulk "
                             "(solves for the eigenvectors: 1.6x the plain analysis on MiniLM-L6, 2.5x at 4096 x 4096).")
RANDOMIZE = typer.Option(False, "--randomize",
                          help="Compare every layer with its entries shuffled: ESD distance, the shuffled matrix's "
                               "traps and alpha, whether the tail survives (a second spectrum per layer).")
BOOTSTRAP = typer.Option(0, "--bootstrap", min=0, metavar="N",
                          help="Goodness-of-fit p-value of each power-law tail from N bootstrap replicates "
                               "(0: none; each replicate refits the tail).")
ALTERNATIVES = typer.Option(False, "--alternatives",
                             help="Likelihood-ratio tests of each tail against lognormal, exponential, stretched "
                                  "exponential and truncated power law, with a verdict.")
FARMS = typer.Option(False, "--farms",
                     help="Also fit alpha and kappa on the pooled ESD of square windows of each layer (FARMS), "
                          "so that layers of different shapes compare; see --farms-window.")
FARMS_WINDOW = typer.Option(None, "--farms-window", min=2, metavar="M",
                            help="FARMS window side (default: min(2000, the layer's smaller side)). Layers compare "
                                 "only under one window: give one no larger than the smallest layer's side.")
FARMS_GRID = typer.Option(15, "--farms-grid", min=1, metavar="K", help="FARMS windows per side of the grid (K x K).")
SEED = typer.Option(0, "--seed", min=0, metavar="N", help="Seed of the shuffles and the bootstrap: the same seed, the same numbers.")
PROGRESS = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on when stderr is a terminal).")
DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")


def selection_fields(min_dim: int, conv: ConvMode, split_fused: bool, skip_embeddings: bool,
               include: list[str], exclude: list[str]) -> dict[str, object]:
    """The AnalysisOptions fields of the tensor-selection flags that analyze, ls and check share."""
    return dict(min_dim=min_dim, conv=conv.value, split_fused=split_fused, skip_embeddings=skip_embeddings,
                include=tuple(include), exclude=tuple(exclude))


def analysis_options_from_flags(precision: Precision, fit: FitMethod, min_tail: int, backend: Backend, device: Device,
                      htmp_fit: bool, threshold: list[str], selection: dict[str, object],
                      evidence: dict[str, object]) -> AnalysisOptions:
    """AnalysisOptions from the analysis flags; `evidence` holds the optional evidence's fields
    (EVIDENCE_FLAGS), by their AnalysisOptions names."""
    return AnalysisOptions(precision=precision.value, fit=fit.value, min_tail=min_tail, backend=backend.value,
                           device=device.value, htmp=htmp_fit, thresholds=parse_thresholds(threshold), **selection,
                           **evidence)  # type: ignore[arg-type]


# Every flag that shapes an analysis: (parameter name, type, option).
ANALYSIS_FLAGS = (
    ("min_dim", int, MIN_DIM), ("conv", ConvMode, CONV), ("split_fused", bool, SPLIT_FUSED),
    ("skip_embeddings", bool, SKIP_EMBEDDINGS), ("include", list[str], INCLUDE), ("exclude", list[str], EXCLUDE),
    ("precision", Precision, PRECISION), ("fit", FitMethod, FIT), ("min_tail", int, MIN_TAIL),
    ("backend", Backend, BACKEND), ("device", Device, DEVICE), ("htmp_fit", bool, HTMP_FIT),
    ("threshold", list[str], THRESHOLD),
)
# The optional evidence, each flag an AnalysisOptions field of the same name.
EVIDENCE_FLAGS = (("vectors", bool, VECTORS), ("randomize", bool, RANDOMIZE), ("bootstrap", int, BOOTSTRAP),
                  ("alternatives", bool, ALTERNATIVES), ("farms", bool, FARMS),
                  ("farms_window", Optional[int], FARMS_WINDOW), ("farms_grid", int, FARMS_GRID), ("seed", int, SEED))


def with_analysis_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command every analysis flag (before its --progress and --debug); it receives them as
    one `analysis: AnalysisOptions` argument. analyze, scan, diff, plot and report share them this way."""
    hints = typing.get_type_hints(command)  # resolved in the command's own module
    own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values()
           if p.name != "analysis"]
    last = [p for p in own if p.name in ("progress", "debug")]
    flags = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=kind)
             for name, kind, option in ANALYSIS_FLAGS + EVIDENCE_FLAGS]
    parameters = [p for p in own if p not in last] + flags + last

    @functools.wraps(command)
    def wrapper(**values: object) -> None:
        given = {name: values.pop(name) for name, _, _ in ANALYSIS_FLAGS}
        evidence = {name: values.pop(name) for name, _, _ in EVIDENCE_FLAGS}
        try:
            options = analysis_options_from_flags(given["precision"], given["fit"], given["min_tail"], given["backend"],  # type: ignore[arg-type]
                                        given["device"], given["htmp_fit"], given["threshold"],  # type: ignore[arg-type]
                                        selection_fields(given["min_dim"], given["conv"], given["split_fused"],  # type: ignore[arg-type]
                                                   given["skip_embeddings"], given["include"], given["exclude"]),  # type: ignore[arg-type]
                                        evidence)
        except HtmpError as err:
            fail(str(err))
        return command(analysis=options, **values)

    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def parse_thresholds(pairs: list[str]):  # type: ignore[no-untyped-def]
    from htmp_cli.fits.phases import PhaseThresholds

    values: dict[str, object] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise HtmpError(f"--threshold {pair!r}: expected NAME=VALUE")
        try:
            values[name.strip()] = float(raw)
        except ValueError:
            raise HtmpError(f"--threshold {pair!r}: {raw!r} is not a number") from None
    return PhaseThresholds.from_mapping(values)

