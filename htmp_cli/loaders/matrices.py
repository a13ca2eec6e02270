"""Which tensors become matrices, and why the others do not.

In this version a matrix is a 2-D floating-point tensor whose smaller side is at least `min_dim`,
analysed whatever its size (embeddings and output heads included). Everything else is listed as
skipped with its reason; nothing is dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from htmp_cli.loaders.dtypes import FLOAT_DTYPES, INTEGER_DTYPES
from htmp_cli.loaders.safetensors import TensorEntry

_EMBEDDING = re.compile(r"(embed|(^|\.)wte(\.|$)|(^|\.)wpe(\.|$)|tok_embeddings)", re.IGNORECASE)
_HEAD = re.compile(r"(^|\.)(lm_head|output|classifier|score)(\.weight)?$", re.IGNORECASE)


@dataclass(frozen=True)
class MatrixSpec:
    """One matrix to analyse: where it comes from and what kind of layer it belongs to."""

    name: str
    kind: str
    shape: tuple[int, int]
    entry: TensorEntry

    @property
    def tensor(self) -> str:
        return self.entry.name

    @property
    def dtype(self) -> str:
        return self.entry.dtype


@dataclass(frozen=True)
class SkippedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    reason: str


def layer_kind(name: str) -> str:
    if _EMBEDDING.search(name):
        return "embedding"
    if _HEAD.search(name):
        return "head"
    return "linear"


def plan_matrices(
    tensors: tuple[TensorEntry, ...], min_dim: int
) -> tuple[list[MatrixSpec], list[SkippedTensor]]:
    """Split tensors into matrices to analyse and skipped tensors, in checkpoint order."""
    matrices: list[MatrixSpec] = []
    skipped: list[SkippedTensor] = []
    for entry in tensors:
        reason = _skip_reason(entry, min_dim)
        if reason is None:
            rows, cols = entry.shape
            matrices.append(MatrixSpec(name=entry.name, kind=layer_kind(entry.name), shape=(rows, cols), entry=entry))
        else:
            skipped.append(SkippedTensor(name=entry.name, shape=entry.shape, dtype=entry.dtype, reason=reason))
    return matrices, skipped


def _skip_reason(entry: TensorEntry, min_dim: int) -> str | None:
    if entry.dtype in INTEGER_DTYPES:
        return f"{entry.dtype} tensor: integer and bool tensors are not weights"
    if entry.dtype not in FLOAT_DTYPES:
        return f"dtype {entry.dtype} is not supported"
    rank = len(entry.shape)
    if rank == 0:
        return "scalar"
    if rank == 1:
        return "1-D tensor (bias or norm scale): no spectrum"
    if rank > 2:
        return f"{rank}-D tensor: conv kernels and stacked experts are not analysed in this version"
    if min(entry.shape) < min_dim:
        return f"smaller side {min(entry.shape)} is below --min-dim {min_dim}"
    return None
