"""A LoRA adapter against its base model: the update's report, the base's and the merged model's
reports of the adapted weights, and the per-module change from base to merged (`htmp analyze
ADAPTER --base MODEL`, `htmp_cli.analyze_adapter`).

The merged model is never written: each adapted weight is read from the base, Delta W added
(formed in float64, one matrix at a time), and analysed, as `merge_and_unload()` would leave it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from htmp_cli.compare import ReportDiff, diff_reports, diff_to_dict
from htmp_cli.errors import CheckpointError
from htmp_cli.loaders import Checkpoint, TensorEntry, open_checkpoint
from htmp_cli.loaders.adapters import LowRankUpdate, update_in_base_layout
from htmp_cli.options import AnalysisOptions
from htmp_cli.pipeline import ProgressListener, analyze
from htmp_cli.results import Report, report_to_dict

SCHEMA = "htmp.adapter/1"


@dataclass(frozen=True)
class AdapterAnalysis:
    """The update, the base and the merged weights, and what the merge changed module by module."""

    update: Report  # every update scale * B A, solved from its factors
    base: Report  # the base model's adapted weights
    merged: Report  # the same weights with their update added
    diff: ReportDiff  # base -> merged, per adapted weight
    unpaired: tuple[tuple[str, str], ...]  # updates with no weight in the base: (name, why)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "update": report_to_dict(self.update), "base": report_to_dict(self.base),
                "merged": report_to_dict(self.merged), "diff": diff_to_dict(self.diff),
                "unpaired": [{"name": name, "why": why} for name, why in self.unpaired]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def analyze_adapter(adapter: str | os.PathLike[str], base: str | os.PathLike[str], options: AnalysisOptions,
                    listener: ProgressListener | None = None, jobs: int | None = None) -> AdapterAnalysis:
    """Analyse an adapter's updates, and the weights they change in `base` before and after merging."""
    opened = open_checkpoint(adapter)
    if not opened.is_adapter:
        raise CheckpointError(f"{adapter}: not a LoRA adapter (no lora_A/lora_B factors), so --base has nothing to merge")
    base_checkpoint = open_checkpoint(base)
    if base_checkpoint.is_adapter:
        raise CheckpointError(f"{base}: is itself an adapter; --base takes the model the adapter was trained on")
    update = analyze(opened, options, listener, jobs=jobs)
    pairs, unpaired = _pair(opened.updates, base_checkpoint)
    before = replace(base_checkpoint, tensors=tuple(entry for _, entry in pairs), skipped=(),
                     notes=base_checkpoint.notes + (f"the {len(pairs)} weight(s) the adapter changes",))
    before_report = analyze(before, options, listener, jobs=jobs)
    merged = _merged(base_checkpoint, opened, pairs)
    merged_report = analyze(merged, options, listener, jobs=1)
    diff = replace(diff_reports(before_report, merged_report), before=f"base {base}", after=f"merged {base} + {adapter}")
    return AdapterAnalysis(update, before_report, merged_report, diff, tuple(unpaired))


def _pair(updates: tuple[LowRankUpdate, ...], base: Checkpoint
          ) -> tuple[list[tuple[LowRankUpdate, TensorEntry]], list[tuple[str, str]]]:
    """Each update with the base weight of its name (or, failing that, the one weight whose name
    ends with it or with which it ends: a base saved without or with the task model's prefix)."""
    by_name = {entry.name: entry for entry in base.tensors}
    pairs, unpaired = [], []
    for update in updates:
        entry = by_name.get(update.name)
        if entry is None:
            near = [e for name, e in by_name.items()
                    if name.endswith("." + update.name) or update.name.endswith("." + name)]
            entry = near[0] if len(near) == 1 else None
        if entry is None:
            unpaired.append((update.name, f"no weight of that name in {base.path}"))
        elif tuple(entry.shape) != tuple(update.shape):
            unpaired.append((update.name, f"the base weight {entry.name} is {'x'.join(map(str, entry.shape))}, "
                                          f"the update {'x'.join(map(str, update.shape))}"))
        else:
            pairs.append((update, entry))
    return pairs, unpaired


def _merged(base: Checkpoint, adapter: Checkpoint, pairs: list[tuple[LowRankUpdate, TensorEntry]]) -> Checkpoint:
    """The base's adapted weights with their updates added, read one at a time."""
    update_of = {entry.name: update for update, entry in pairs}

    def read(entry: TensorEntry) -> tuple[np.ndarray, None]:
        update = update_of[entry.name]
        W = np.asarray(base.read(entry), dtype=np.float64)
        return W + update_in_base_layout(update, adapter.read(update.b), adapter.read(update.a)), None

    return Checkpoint(path=Path(f"{base.path} + {adapter.path}"), format="merged-" + adapter.format,
                      files=(), tensors=tuple(entry for _, entry in pairs), size_bytes=base.size_bytes,
                      fingerprint=f"{base.fingerprint}+{adapter.fingerprint}",
                      notes=(f"merged: each of the {len(pairs)} adapted weight(s) of {base.path} plus its update, "
                             "in float64",), reader=read)
