"""The analysis options: one frozen object, defaults documented once, validated in one place."""

from __future__ import annotations

import difflib
import numbers
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from htmp_cli.device import DEVICES
from htmp_cli.errors import OptionError
from htmp_cli.fits.phases import PhaseThresholds
from htmp_cli.loaders.matrices import CONV_MODES, MatrixRules

PRECISIONS = ("float64", "float32")
_OPTIONAL = {"farms_window": int}  # the type of each option whose default is None
FIT_METHODS = ("csn", "ww")
BACKENDS = ("auto", "numpy", "torch")


@dataclass(frozen=True)
class AnalysisOptions:
    """How a checkpoint is analysed.

    min_dim: smallest side a 2-D tensor needs to be analysed. The default, 10, equals the default
        `min_tail`: a matrix with fewer eigenvalues cannot hold a tail of that size, so its fit could
        only fail. (WeightWatcher analyses from 8 up; pass `--min-dim 8` to see the same layers.)
    precision: dtype of the Gram product and the symmetric eigensolver. float64 is accurate down
        to the smallest eigenvalues; float32 is the fast option, accurate (<= 1e-5 relative) for
        the top of the spectrum that the tail fit uses.
    fit: "csn" is the Clauset-Shalizi-Newman fit (true-sup KS distance, distinct candidates with at
        least `min_tail` points above them); "ww" reproduces WeightWatcher 0.7.7's default fit.
    min_tail: smallest tail a "csn" fit may choose.
    backend: eigensolver library on the CPU. "auto" uses torch (its LAPACK is faster on large
        matrices) when it is installed and a matrix has a side of at least 1,024, numpy otherwise.
    device: "cuda" computes every spectrum with torch on the GPU (Gram product and eigensolve, in
        `precision`); "auto" does so for matrices with a side of at least 1,024 when torch sees a
        GPU, and uses the CPU otherwise; "cpu" never asks.
    htmp: fit the HTMP law (both orientations) to every layer.
    thresholds: the numbers of the phase rules (see htmp_cli.fits.phases.PhaseThresholds).
    conv: "pooled" analyses a conv kernel's (out, in) slices as one pooled spectrum (WeightWatcher's
        way); "unfold" analyses the (out, in * kernel size) matrix.
    split_fused: split fused q/k/v projections into three matrices where the shape allows.
    skip_embeddings: leave embeddings and output heads out.
    include, exclude: regexes on tensor names; a tensor is analysed if it matches some `include`
        (when any are given) and no `exclude`.
    vectors: solve for the eigenvectors too and report their localisation against the random
        (Haar) baseline, for the tail, the spikes and the bulk (htmp_cli.fits.vectors). It costs
        the eigenvector solve: about 2-3 times the eigenvalues alone.
    randomize: compare every layer with its entries shuffled (htmp_cli.fits.randomize): the two
        spectra's distance, the shuffled matrix's traps and alpha, and whether the tail survives.
        It costs a second spectrum per layer and a shuffled copy of the weights in memory.
    bootstrap: replicates of the power law's goodness-of-fit bootstrap (Clauset, Shalizi, Newman);
        0 computes no p-value. Each replicate repeats the tail fit (about 8 ms at M = 384, 85 ms at
        M = 4096, on one core).
    alternatives: likelihood-ratio tests of the power-law tail against the lognormal, exponential,
        stretched exponential and truncated power law, with a verdict (htmp_cli.fits.tailtests).
    farms: fit the power law and HTMP (gamma = 1) to the pooled ESD of square windows of each layer
        as well (FARMS, htmp_cli.fits.farms), so that layers of different shapes compare.
    farms_window: the windows' side (None: min(2000, the layer's smaller side)). Layers compare only
        under one window: give one no larger than the smallest layer's smaller side.
    farms_grid: windows per side of the regular grid (farms_grid^2 windows at most).
    seed: the seed of every random draw (the shuffles, the bootstrap): the same seed, the same numbers.
    """

    min_dim: int = 10
    precision: str = "float64"
    fit: str = "csn"
    min_tail: int = 10
    backend: str = "auto"
    device: str = "auto"
    htmp: bool = True
    thresholds: PhaseThresholds = field(default_factory=PhaseThresholds)
    conv: str = "pooled"
    split_fused: bool = False
    skip_embeddings: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    vectors: bool = False
    randomize: bool = False
    bootstrap: int = 0
    alternatives: bool = False
    farms: bool = False
    farms_window: int | None = None
    farms_grid: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_dim < 1:
            raise OptionError(f"--min-dim must be at least 1, got {self.min_dim}")
        if self.precision not in PRECISIONS:
            raise OptionError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.fit not in FIT_METHODS:
            raise OptionError(f"--fit must be one of {', '.join(FIT_METHODS)}, got {self.fit!r}")
        if self.bootstrap < 0:
            raise OptionError(f"--bootstrap must be at least 0 (0: no bootstrap), got {self.bootstrap}")
        if self.fit == "ww" and (self.bootstrap or self.alternatives):
            raise OptionError("--bootstrap and --alternatives test the csn tail fit; they cannot be combined with --fit ww")
        if not self.farms and (self.farms_window is not None or self.farms_grid != 15):
            raise OptionError("--farms-window and --farms-grid set up --farms, which is off: add --farms")
        if self.farms_window is not None and self.farms_window < 2:
            raise OptionError(f"--farms-window must be at least 2, got {self.farms_window}")
        if self.farms_grid < 1:
            raise OptionError(f"--farms-grid must be at least 1, got {self.farms_grid}")
        if self.seed < 0:
            raise OptionError(f"--seed must be at least 0, got {self.seed}")
        if self.min_tail < 2:
            raise OptionError(f"--min-tail must be at least 2, got {self.min_tail}")
        if self.backend not in BACKENDS:
            raise OptionError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.device not in DEVICES:
            raise OptionError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.device == "cuda" and self.backend == "numpy":
            raise OptionError("--backend numpy computes on the CPU; it cannot be combined with --device cuda")
        if self.conv not in CONV_MODES:
            raise OptionError(f"--conv must be one of {', '.join(CONV_MODES)}, got {self.conv!r}")
        for flag, patterns in (("--include", self.include), ("--exclude", self.exclude)):
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise OptionError(f"{flag} {pattern!r} is not a valid regular expression: {err}") from None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], table: str = "") -> "AnalysisOptions":
        """Options from a mapping of field names (an [analysis] table, a call's keyword arguments),
        each checked for its type; an unknown name is an OptionError that names it and its nearest.
        Messages name a key as `table.key` when a table is given."""
        known = [f.name for f in fields(cls)]

        def named(key: str) -> str:
            return f"{table}.{key}" if table else key

        for key in values:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise OptionError(f"unknown key {named(key)!r} ({hint}known: {', '.join(known)})")
        checked = dict(values)
        for key in ("include", "exclude"):
            if key in checked:
                patterns = (checked[key],) if isinstance(checked[key], str) else checked[key]
                if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
                    raise OptionError(f"{named(key)} must be a list of regular expressions, got {checked[key]!r}")
                checked[key] = tuple(patterns)
        if "thresholds" in checked and not isinstance(checked["thresholds"], PhaseThresholds):
            if not isinstance(checked["thresholds"], Mapping):
                raise OptionError(f"{named('thresholds')} must be a table of phase thresholds, got {checked['thresholds']!r}")
            checked["thresholds"] = PhaseThresholds.from_mapping(dict(checked["thresholds"]))
        defaults = cls()
        for key, value in checked.items():
            if key in ("thresholds", "include", "exclude"):
                continue
            if value is None and getattr(defaults, key) is None:  # an option whose default is None takes None
                continue
            expected = type(getattr(defaults, key)) if getattr(defaults, key) is not None else _OPTIONAL[key]
            # numpy's integers and booleans are as good as Python's; a bool is not an integer here
            if expected is int and isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
                checked[key] = int(value)
            elif expected is bool and isinstance(value, (bool, np.bool_)):
                checked[key] = bool(value)
            elif type(value) is not expected:
                kind = {int: "an integer", bool: "true or false", str: "a string"}.get(expected, expected.__name__)
                raise OptionError(f"{named(key)} must be {kind}, got {value!r}")
        return cls(**checked)

    @property
    def matrix_rules(self) -> MatrixRules:
        return MatrixRules(min_dim=self.min_dim, conv=self.conv, split_fused=self.split_fused,
                           skip_embeddings=self.skip_embeddings, include=self.include, exclude=self.exclude)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
