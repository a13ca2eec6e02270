"""Which tensors become matrices, how, and why the others do not.

The rules (each listed in the README with the option that changes it):

- 2-D floating-point tensors are matrices as they are, whatever their size: embeddings and output
  heads included (`--skip-embeddings` leaves both out).
- Conv kernels, `(out, in, k)`, `(out, in, kh, kw)` or `(out, in, kd, kh, kw)`: by default each of
  the k (kh*kw, ...) slices of shape (out, in) is a matrix and their eigenvalues are pooled into one
  spectrum, as WeightWatcher does; `--conv unfold` analyses the (out, in*kh*kw) matrix instead.
- Stacked experts `(E, out, in)` (a 3-D tensor whose name says experts: `experts`, `_exps`): one
  matrix per expert, named `tensor:expertK`; the summary groups them. A 3-D tensor that is neither
  named so nor shaped like a conv1d kernel (k at most 64) is skipped, with why.
- Fused attention projections (`c_attn`, `qkv_proj`, `Wqkv`, `qkv`, `attn_qkv`, `in_proj_weight`,
  `query_key_value`) are analysed whole; `--split-fused` splits them into q, k and v (`tensor:q`, ...)
  when one side is exactly three times the other, and says why when it cannot.
- `--include` / `--exclude` regexes select tensors by name (re.search).
- Integer, bool and unsupported dtypes, scalars and 1-D tensors are skipped; so is a matrix whose
  smaller side is below `--min-dim`. Every skipped tensor is listed with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from htmp_cli.loaders.dtypes import FLOAT_DTYPES, INTEGER_DTYPES, QUANTIZED_DTYPES
from htmp_cli.loaders.entry import TensorEntry

_EMBEDDING = re.compile(r"(embed|(^|\.)wte(\.|$)|(^|\.)wpe(\.|$)|tok_embeddings|token_embd|position_embd)", re.IGNORECASE)
_HEAD = re.compile(r"(^|\.)(lm_head|head|output|classifier|score)(\.weight)?$", re.IGNORECASE)
_EXPERTS = re.compile(r"(experts?|_exps)(\.|_|$)", re.IGNORECASE)
_EXPERT_INDEX = re.compile(r"(experts?)\.(\d+)\.", re.IGNORECASE)
_FUSED = re.compile(r"(^|\.)(c_attn|qkv_proj|Wqkv|qkv|attn_qkv|query_key_value)(\.weight)?$|(^|\.)in_proj_weight$")
# Layouts whose rows interleave q, k and v head by head: a contiguous three-way split would mix them.
_INTERLEAVED = re.compile(r"(^|\.)query_key_value(\.weight)?$")
CONV_KINDS = {3: "conv1d", 4: "conv2d", 5: "conv3d"}
CONV_MODES = ("pooled", "unfold")
MAX_CONV1D_KERNEL = 64


@dataclass(frozen=True)
class MatrixView:
    """How a matrix is cut from its stored tensor: whole, one expert, a third of a fused projection,
    a conv kernel unfolded, or a conv kernel's slices (pooled into one spectrum)."""

    how: str = "whole"  # whole | expert | rows | cols | unfold | pooled
    index: int = 0
    start: int = 0
    stop: int = 0

    def apply(self, W: np.ndarray) -> np.ndarray:
        if self.how == "whole":
            return W
        if self.how == "expert":
            return W[self.index]
        if self.how == "rows":
            return W[self.start : self.stop]
        if self.how == "cols":
            return W[:, self.start : self.stop]
        if self.how == "unfold":
            return W.reshape(W.shape[0], -1)
        if self.how == "pooled":
            # (out, in, k...) -> (k, out, in): slice j is W[:, :, j] for a flattened kernel position j.
            flat = W.reshape(W.shape[0], W.shape[1], -1)
            return flat.movedim(-1, 0) if hasattr(flat, "movedim") else np.moveaxis(flat, -1, 0)
        raise ValueError(f"unknown matrix view {self.how!r}")


@dataclass(frozen=True)
class MatrixSpec:
    """One matrix to analyse: where it comes from, how it is cut, and what kind of layer it is."""

    name: str
    kind: str
    shape: tuple[int, int]  # of the matrix; for pooled conv slices, of one slice
    entry: TensorEntry
    view: MatrixView = MatrixView()
    slices: int = 1  # matrices whose eigenvalues are pooled (conv kernel positions)
    group: str | None = None  # experts of one layer share a group
    note: str | None = None
    # A low-rank update (a LoRA adapter's): `entry` holds its B factor, `factor` its A factor, and
    # the matrix is scale * B A, never formed (htmp_cli.loaders.adapters).
    factor: TensorEntry | None = None
    scale: float = 1.0

    @property
    def update_rank(self) -> int | None:
        """The rank r of a low-rank update (its A factor's first side); None for a weight."""
        return self.factor.shape[0] if self.factor is not None else None

    @property
    def tensor(self) -> str:
        return self.entry.name

    @property
    def dtype(self) -> str:
        return self.entry.dtype


@dataclass(frozen=True)
class LowRankFactors:
    """The factors of a low-rank matrix scale * B A_k, read and decoded to floats: B is (out, r),
    each A_k is (r, in); one A for a linear or embedding update, one per kernel position for a
    conv update's pooled slices."""

    B: np.ndarray
    A: tuple[np.ndarray, ...]
    scale: float


@dataclass(frozen=True)
class SkippedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    reason: str


@dataclass(frozen=True)
class MatrixRules:
    """The options that decide which tensors become which matrices."""

    min_dim: int = 10
    conv: str = "pooled"
    split_fused: bool = False
    skip_embeddings: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


def layer_kind(name: str) -> str:
    """The kind of a 2-D tensor, from its name."""
    if _EMBEDDING.search(name):
        return "embedding"
    if _HEAD.search(name):
        return "head"
    if _FUSED.search(name):
        return "fused-qkv"
    if _EXPERT_INDEX.search(name):
        return "expert"
    return "linear"


def plan_matrices(tensors: Sequence[TensorEntry], rules: MatrixRules = MatrixRules()
                  ) -> tuple[list[MatrixSpec], list[SkippedTensor]]:
    """Split tensors into matrices to analyse and skipped tensors, in checkpoint order."""
    include = [re.compile(p) for p in rules.include]
    exclude = [re.compile(p) for p in rules.exclude]
    matrices: list[MatrixSpec] = []
    skipped: list[SkippedTensor] = []
    for entry in tensors:
        reason = selection_reason(entry.name, include, exclude) or _dtype_reason(entry)
        specs: list[MatrixSpec] = []
        if reason is None:
            specs, reason = _matrices_of(entry, rules)
        if reason is not None:
            skipped.append(SkippedTensor(name=entry.name, shape=entry.shape, dtype=entry.dtype, reason=reason))
        matrices.extend(specs)
    return matrices, skipped


def selection_reason(name: str, include: Sequence[re.Pattern], exclude: Sequence[re.Pattern]) -> str | None:
    """Why --include or --exclude leaves a tensor out, or None (a saved report's selection uses it too)."""
    if include and not any(p.search(name) for p in include):
        return "not matched by --include"
    hit = next((p for p in exclude if p.search(name)), None)
    return f"excluded by --exclude {hit.pattern!r}" if hit is not None else None


def _dtype_reason(entry: TensorEntry) -> str | None:
    if entry.dtype in INTEGER_DTYPES:
        return f"{entry.dtype} tensor: integer and bool tensors are not weights"
    if entry.dtype not in FLOAT_DTYPES and entry.dtype not in QUANTIZED_DTYPES:
        return f"dtype {entry.dtype} is not supported"
    return None


def left_out_as_embedding(kind: str, rules: MatrixRules) -> str | None:
    """Why --skip-embeddings leaves a matrix of this kind out, or None."""
    if rules.skip_embeddings and kind in ("embedding", "head"):
        return f"{'embedding' if kind == 'embedding' else 'output head'} left out by --skip-embeddings"
    return None


def too_small(shape: tuple[int, int], min_dim: int) -> str | None:
    """Why --min-dim leaves a matrix of this shape out, or None."""
    if min(shape) < min_dim:
        return f"smaller side {min(shape)} is below --min-dim {min_dim}"
    return None


def _matrices_of(entry: TensorEntry, rules: MatrixRules) -> tuple[list[MatrixSpec], str | None]:
    shape, name = entry.shape, entry.name
    rank = len(shape)
    if rank == 0:
        return [], "scalar"
    if rank == 1:
        return [], "1-D tensor (bias or norm scale): no spectrum"
    if rank == 2:
        return _two_d(entry, rules)
    if rank == 3 and _EXPERTS.search(name):
        n_experts, rows, cols = shape
        small = too_small((rows, cols), rules.min_dim)
        if small:
            return [], f"experts of shape {rows}x{cols}: {small}"
        return [MatrixSpec(name=f"{name}:expert{k}", kind="expert", shape=(rows, cols), entry=entry,
                           view=MatrixView("expert", index=k), group=name) for k in range(n_experts)], None
    if rank in CONV_KINDS:
        out_channels, in_channels, *kernel = shape
        if rank == 3 and kernel[0] > MAX_CONV1D_KERNEL:
            return [], (f"3-D tensor {'x'.join(map(str, shape))}: not named like stacked experts ('experts', "
                        f"'_exps'), and its last side is too long for a conv1d kernel (> {MAX_CONV1D_KERNEL})")
        kind = CONV_KINDS[rank]
        positions = int(np.prod(kernel))
        if rules.conv == "unfold":
            unfolded = (out_channels, in_channels * positions)
            small = too_small(unfolded, rules.min_dim)
            if small:
                return [], f"{kind} kernel unfolded to {unfolded[0]}x{unfolded[1]}: {small}"
            return [MatrixSpec(name=name, kind=kind, shape=unfolded, entry=entry, view=MatrixView("unfold"))], None
        small = too_small((out_channels, in_channels), rules.min_dim)
        if small:
            hint = " (try --conv unfold)" if min(out_channels, in_channels * positions) >= rules.min_dim else ""
            return [], f"{kind} slices of {out_channels}x{in_channels}: {small}{hint}"
        return [MatrixSpec(name=name, kind=kind, shape=(out_channels, in_channels), entry=entry,
                           view=MatrixView("pooled"), slices=positions)], None
    return [], f"{rank}-D tensor: neither a matrix, a conv kernel nor stacked experts"


def _two_d(entry: TensorEntry, rules: MatrixRules) -> tuple[list[MatrixSpec], str | None]:
    name = entry.name
    rows, cols = entry.shape
    kind = layer_kind(name)
    left_out = left_out_as_embedding(kind, rules)
    if left_out:
        return [], left_out
    small = too_small((rows, cols), rules.min_dim)
    if small:
        return [], small
    group = _EXPERT_INDEX.sub(r"\1.*.", name) if kind == "expert" else None
    whole = MatrixSpec(name=name, kind=kind, shape=(rows, cols), entry=entry, group=group)
    if kind != "fused-qkv" or not rules.split_fused:
        return [whole], None
    if _INTERLEAVED.search(name):
        note = ("--split-fused: not split, query_key_value layouts interleave q, k and v head by head "
                "and the head count is not in the weights; analysed whole")
    elif rows == 3 * cols or cols == 3 * rows:
        along_rows = rows == 3 * cols
        third = rows // 3 if along_rows else cols // 3
        part_shape = (third, cols) if along_rows else (rows, third)
        if too_small(part_shape, rules.min_dim):
            return [whole], None
        return [MatrixSpec(name=f"{name}:{part}", kind="attention", shape=part_shape, entry=entry,
                           view=MatrixView("rows" if along_rows else "cols", start=k * third, stop=(k + 1) * third),
                           note=f"third {k + 1} of fused {rows}x{cols}")
                for k, part in enumerate("qkv")], None
    else:
        note = (f"--split-fused: not split, {rows}x{cols} is not three equal parts "
                "(grouped-query attention gives k and v fewer heads than q); analysed whole")
    return [MatrixSpec(name=name, kind=kind, shape=(rows, cols), entry=entry, note=note)], None
