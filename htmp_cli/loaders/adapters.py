"""PEFT adapters: a LoRA adapter's factors paired into the updates it makes to its base model.

An adapter (`adapter_model.safetensors` or `.bin`, beside `adapter_config.json`) holds per adapted
module a `lora_A` (r x in) and a `lora_B` (out x r) factor, `lora_embedding_A`/`_B` for
embeddings, conv kernels for conv layers. The update is Delta W = scale * B A with scale
lora_alpha / r, or lora_alpha / sqrt(r) under rsLoRA (`use_rslora`); `rank_pattern` and
`alpha_pattern` set r and alpha module by module, matched as PEFT matches them. Each update is
named by the weight it changes in the base model (`model.layers.0.self_attn.q_proj.weight`), so
that the base and the merged model pair with it by name. What is not a plain LoRA update (DoRA's
magnitudes, other PEFT types, full weights saved beside the factors) is skipped with the reason.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders.entry import TensorEntry
from htmp_cli.loaders.matrices import (CONV_KINDS, LowRankFactors, MatrixRules, MatrixSpec, MatrixView, SkippedTensor,
                                       layer_kind, left_out_as_embedding, selection_reason, too_small)

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."
# lora_A / lora_B (Linear, Conv) end in ".weight"; the embedding factors are parameters themselves.
# Files PEFT saves drop the adapter's name; a state dict taken from a live model keeps it.
_FACTOR = re.compile(r"^(?P<module>.+)\.(?:(?P<linear>lora_[AB])(?:\.[^.]+)?\.weight|(?P<embedding>lora_embedding_[AB])(?:\.[^.]+)?)$")
_DORA = re.compile(r"\.lora_magnitude_vector(\.|$)")


@dataclass(frozen=True)
class AdapterConfig:
    """What of `adapter_config.json` decides the updates."""

    peft_type: str
    r: int
    lora_alpha: float
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    base_model: str | None = None

    def alpha_of(self, module: str) -> float:
        return _by_pattern(self.alpha_pattern, module, self.lora_alpha)

    def rank_of(self, module: str) -> int:
        return _by_pattern(self.rank_pattern, module, self.r)

    def scale_of(self, module: str, rank: int) -> float:
        alpha = self.alpha_of(module)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    def describe_scale(self, module: str) -> str:
        alpha = self.alpha_of(module)
        if self.use_rslora:
            return f"lora_alpha {alpha:g} / sqrt(r), rsLoRA"
        return f"lora_alpha {alpha:g} / r"


def _by_pattern(patterns: tuple[tuple[str, Any], ...], module: str, default: Any) -> Any:
    """PEFT's rule: the first key that matches the module's name, or a suffix of it after a dot."""
    for key, value in patterns:
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error:
            if module == key or module.endswith("." + key):
                return value
    return default


@dataclass(frozen=True)
class LowRankUpdate:
    """One adapted module's update, scale * B A, as the pair of stored factors."""

    name: str  # the changed weight's name in the base model
    layout: str  # linear | embedding | conv1d | conv2d | conv3d
    shape: tuple[int, ...]  # of Delta W, in the base weight's stored layout
    transposed: bool  # that layout is (B A)^T: an embedding's, or a Conv1D's under fan_in_fan_out
    a: TensorEntry
    b: TensorEntry
    rank: int
    scale: float
    scale_source: str  # how the scale was found, in words


def find_config(path: Path) -> Path | None:
    """The adapter config of a folder or of a weights file beside one."""
    folder = path if path.is_dir() else path.parent
    config = folder / CONFIG_NAME
    return config if config.is_file() else None


def weights_in(folder: Path) -> Path:
    """An adapter folder's weights file: safetensors before .bin, as PEFT saves them."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: has {CONFIG_NAME} but no {' or '.join(WEIGHT_NAMES)} beside it")


def holds_lora_factors(tensors: Iterable[TensorEntry]) -> bool:
    return any(_FACTOR.match(entry.name) for entry in tensors)


def read_config(path: Path) -> AdapterConfig:
    """`adapter_config.json`, validated; a CheckpointError names what is wrong."""
    try:
        raw = json.loads(path.read_bytes()[: 16 * 2**20])
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PEFT adapter config ({str(err)[:120]})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: a PEFT adapter config is a JSON object, this is {type(raw).__name__}")
    peft_type = raw.get("peft_type", "LORA")
    if not isinstance(peft_type, str):
        raise CheckpointError(f"{path}: peft_type must be a string, got {peft_type!r:.60}")
    r = raw.get("r", 8)
    alpha = raw.get("lora_alpha", 8)
    if peft_type.upper() == "LORA":
        if not _is_int(r) or r < 1:
            raise CheckpointError(f"{path}: r must be a positive integer, got {r!r:.60}")
        if not _is_number(alpha):
            raise CheckpointError(f"{path}: lora_alpha must be a number, got {alpha!r:.60}")
    return AdapterConfig(
        peft_type=peft_type.upper(), r=int(r) if _is_int(r) else 8, lora_alpha=float(alpha) if _is_number(alpha) else 8.0,
        use_rslora=raw.get("use_rslora") is True, use_dora=raw.get("use_dora") is True,
        fan_in_fan_out=raw.get("fan_in_fan_out") is True,
        rank_pattern=_pattern(path, raw, "rank_pattern", _is_int),
        alpha_pattern=_pattern(path, raw, "alpha_pattern", _is_number),
        base_model=raw["base_model_name_or_path"] if isinstance(raw.get("base_model_name_or_path"), str) else None,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pattern(path: Path, raw: dict[str, Any], key: str, valid) -> tuple[tuple[str, Any], ...]:  # type: ignore[no-untyped-def]
    value = raw.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and valid(v) for k, v in value.items()):
        raise CheckpointError(f"{path}: {key} must map module names to numbers")
    return tuple(value.items())


def pair_updates(tensors: Sequence[TensorEntry], config: AdapterConfig | None
                 ) -> tuple[list[LowRankUpdate], list[SkippedTensor], list[str]]:
    """The updates an adapter's tensors make, the tensors that are not (with why), and notes."""
    skipped: list[SkippedTensor] = []
    notes: list[str] = []

    def skip(entry: TensorEntry, reason: str) -> None:
        skipped.append(SkippedTensor(entry.name, entry.shape, entry.dtype, reason))

    if config is not None and config.peft_type != "LORA":
        for entry in tensors:
            skip(entry, f"PEFT type {config.peft_type}: htmp analyses LoRA adapters (updates scale * B A) only")
        return [], skipped, notes
    if config is not None and config.use_dora:
        for entry in tensors:
            skip(entry, "DoRA adapter (use_dora): a learned magnitude rescales each column of W + scale * B A, "
                        "so the update is not scale * B A; htmp does not analyse DoRA")
        return [], skipped, notes
    factors: dict[str, dict[str, TensorEntry]] = {}
    for entry in tensors:
        match = _FACTOR.match(entry.name)
        if match is None:
            if _DORA.search(entry.name):
                skip(entry, "DoRA magnitude vector: htmp does not analyse DoRA")
            elif entry.name.endswith(".base_layer.weight") or ".modules_to_save." in entry.name:
                skip(entry, "a full weight saved with the adapter (a resized embedding or modules_to_save), "
                            "not a low-rank update")
            else:
                skip(entry, "not a LoRA factor (lora_A, lora_B, lora_embedding_A, lora_embedding_B)")
            continue
        module = match["module"].removeprefix(_PREFIX)
        which = (match["linear"] or match["embedding"])
        factors.setdefault(module, {})[which] = entry
    updates = []
    for module, pair in factors.items():
        update, reason = _update(module, pair, config)
        if update is None:
            for entry in pair.values():
                skip(entry, reason or "")
        else:
            updates.append(update)
    if config is None:
        notes.append(f"no {CONFIG_NAME} beside the adapter: its scale lora_alpha / r is unknown and taken as 1 "
                     "(alpha, stable rank and the phase do not depend on it; the norms do)")
    return updates, skipped, notes


def _update(module: str, pair: dict[str, TensorEntry], config: AdapterConfig | None
            ) -> tuple[LowRankUpdate | None, str | None]:
    embedding = "lora_embedding_A" in pair or "lora_embedding_B" in pair
    a = pair.get("lora_embedding_A" if embedding else "lora_A")
    b = pair.get("lora_embedding_B" if embedding else "lora_B")
    if a is None or b is None:
        have = next(iter(pair))
        return None, f"{have} of {module} has no {'B' if have.endswith('A') else 'A'} factor in the adapter"
    rank = a.shape[0] if a.shape else 0
    if len(a.shape) < 2 or len(b.shape) < 2 or b.shape[1] != rank or rank < 1:
        return None, f"the factors of {module} do not multiply: A {_shape(a)}, B {_shape(b)}"
    if embedding:
        if len(a.shape) != 2 or len(b.shape) != 2:
            return None, f"embedding factors of {module} are not matrices: A {_shape(a)}, B {_shape(b)}"
        layout, shape, transposed = "embedding", (a.shape[1], b.shape[0]), True  # (vocabulary, dim)
    elif len(a.shape) == 2:
        if len(b.shape) != 2:
            return None, f"the factors of {module} do not multiply: A {_shape(a)}, B {_shape(b)}"
        transposed = config is not None and config.fan_in_fan_out
        layout = "linear"
        shape = (a.shape[1], b.shape[0]) if transposed else (b.shape[0], a.shape[1])
    elif len(a.shape) in CONV_KINDS and len(b.shape) == len(a.shape):
        if any(side != 1 for side in b.shape[2:]):
            return None, f"conv update of {module} with a B kernel of {_shape(b)}: htmp analyses B kernels of 1 only"
        layout, shape, transposed = CONV_KINDS[len(a.shape)], (b.shape[0], *a.shape[1:]), False
    else:
        return None, f"the factors of {module} have shapes htmp does not pair: A {_shape(a)}, B {_shape(b)}"
    if config is None:
        scale, source = 1.0, f"unknown without {CONFIG_NAME}, taken as 1"
    else:
        expected = config.rank_of(module)
        if expected != rank:
            return None, (f"the factors of {module} have rank {rank}, the config says r {expected}: "
                          "its scale cannot be trusted")
        scale, source = config.scale_of(module, rank), config.describe_scale(module)
    return LowRankUpdate(name=f"{module}.weight", layout=layout, shape=shape, transposed=transposed, a=a, b=b, rank=rank, scale=scale,
                         scale_source=source), None


def _shape(entry: TensorEntry) -> str:
    return "x".join(map(str, entry.shape)) or "scalar"


def plan_updates(updates: Sequence[LowRankUpdate], rules: MatrixRules) -> tuple[list[MatrixSpec], list[SkippedTensor]]:
    """The updates as matrices, under the same selection rules as weights (by the adapted weight's name)."""
    include = [re.compile(p) for p in rules.include]
    exclude = [re.compile(p) for p in rules.exclude]
    matrices: list[MatrixSpec] = []
    skipped: list[SkippedTensor] = []
    for update in updates:
        spec, reason = _spec(update, rules, include, exclude)
        if spec is None:
            for entry in (update.a, update.b):
                skipped.append(SkippedTensor(entry.name, entry.shape, entry.dtype, f"update of {update.name}: {reason}"))
        else:
            matrices.append(spec)
    return matrices, skipped


def _spec(update: LowRankUpdate, rules: MatrixRules, include: list[re.Pattern], exclude: list[re.Pattern]
          ) -> tuple[MatrixSpec | None, str | None]:
    reason = selection_reason(update.name, include, exclude)
    if reason:
        return None, reason
    kind = update.layout if update.layout in (*CONV_KINDS.values(), "embedding") else layer_kind(update.name)
    left_out = left_out_as_embedding(kind, rules)
    if left_out:
        return None, left_out
    out_channels, in_channels, *kernel = update.shape
    view, shape, slices = MatrixView("whole"), (out_channels, in_channels), 1
    if kernel:
        positions = math.prod(kernel)
        if rules.conv == "unfold":
            view, shape = MatrixView("unfold"), (out_channels, in_channels * positions)
        else:
            view, slices = MatrixView("pooled"), positions
    small = too_small(shape, rules.min_dim)
    if small:
        return None, small
    note = (f"LoRA update scale * B A of rank {update.rank}, scale {update.scale:g} ({update.scale_source}): "
            f"at most {update.rank * slices} non-zero eigenvalues, so the tail fit is limited to them")
    return MatrixSpec(name=update.name, kind=kind, shape=shape, entry=update.b, view=view, slices=slices, note=note,
                      factor=update.a, scale=update.scale), None


def low_rank_factors(B: np.ndarray, A: np.ndarray, view: MatrixView, scale: float) -> LowRankFactors:
    """The decoded factors of one planned update; a conv update's A as one matrix per kernel position
    (pooled) or unfolded, as for a conv kernel."""
    B = np.asarray(B, dtype=np.float64).reshape(B.shape[0], B.shape[1])  # a conv B's 1 x 1 kernel drops
    A = np.asarray(A, dtype=np.float64)
    if view.how == "pooled":
        flat = A.reshape(A.shape[0], A.shape[1], -1)
        return LowRankFactors(B, tuple(flat[:, :, j] for j in range(flat.shape[2])), scale)
    return LowRankFactors(B, (A.reshape(A.shape[0], -1),), scale)


def with_updates(checkpoint: Any, config: AdapterConfig | None, config_path: Path | None) -> Any:
    """An opened adapter file as an adapter checkpoint: its updates paired, the rest skipped."""
    updates, skipped, notes = pair_updates(checkpoint.tensors, config)
    if config is not None:
        head = (f"PEFT {config.peft_type} adapter: {len(updates)} adapted module(s), r {config.r}, "
                f"lora_alpha {config.lora_alpha:g}" + (", rsLoRA" if config.use_rslora else "")
                + (f"; base model {config.base_model}" if config.base_model else ""))
        notes.insert(0, head)
    fingerprint = checkpoint.fingerprint
    if config_path is not None:
        import hashlib

        digest = hashlib.sha256(fingerprint.encode() + config_path.read_bytes()[: 16 * 2**20]).hexdigest()[:32]
        fingerprint = f"sha256-sampled:{digest}"
    return replace(checkpoint, format=f"peft-lora-{checkpoint.format}", updates=tuple(updates),
                   skipped=checkpoint.skipped + tuple(skipped), notes=checkpoint.notes + tuple(notes),
                   fingerprint=fingerprint)


def update_in_base_layout(update: LowRankUpdate, B: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Delta W itself, in float64 and in the stored layout of the weight it changes: what merging the
    adapter adds to that weight (formed only to merge, one matrix at a time)."""
    B = np.asarray(B, dtype=np.float64).reshape(B.shape[0], B.shape[1])
    A = np.asarray(A, dtype=np.float64)
    product = update.scale * (B @ A.reshape(A.shape[0], -1))
    if update.transposed:
        return product.T
    return product.reshape(update.shape)
