"""Shard indexes (`*.index.json` of Hugging Face releases): which tensor lives in which shard file.

The same rules hold for safetensors and PyTorch indexes: every shard name must resolve inside the
checkpoint's folder (an index from a stranger must not make htmp read /etc/passwd), every shard must
exist, and the index and the shards must agree tensor for tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from htmp_cli.errors import CheckpointError


def read_shard_index(index_path: Path) -> tuple[dict[str, str], list[Path]]:
    """The index's weight_map (tensor name -> shard name) and the shard paths, in sorted name order."""
    folder = index_path.parent.resolve()
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except OSError as err:
        raise CheckpointError(f"{index_path}: cannot read: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{index_path}: not valid JSON ({err})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index_path}: 'weight_map' must map tensor names to shard file names")
    shards = []
    for shard_name in sorted(set(weight_map.values())):
        try:
            shard = (folder / shard_name).resolve()
        except (OSError, RuntimeError, ValueError) as err:  # a link loop (RuntimeError before 3.13), a NUL byte
            raise CheckpointError(f"{index_path}: shard {shard_name!r} cannot be resolved "
                                  f"({'symbolic link loop' if 'loop' in str(err).lower() else err})") from None
        if folder not in shard.parents:
            raise CheckpointError(f"{index_path}: shard {shard_name!r} resolves outside the checkpoint folder")
        if not shard.is_file():
            raise CheckpointError(f"{index_path}: shard {shard_name!r} is missing")
        shards.append(shard)
    return weight_map, shards


def check_weight_map(index_path: Path, weight_map: dict[str, str], found: Iterable[tuple[str, Path]]) -> None:
    """Fail unless the (tensor key, shard path) pairs read from the shards are exactly the index's."""
    by_key: dict[str, Path] = {}
    for key, shard in found:
        if key in by_key:
            raise CheckpointError(f"{index_path}: tensor {key!r} appears in two shards")
        by_key[key] = shard
    for key, shard_name in weight_map.items():
        shard = by_key.get(key)
        if shard is None or shard.name != Path(shard_name).name:
            raise CheckpointError(f"{index_path}: tensor {key!r} is not in shard {shard_name!r}")
    unlisted = sorted(set(by_key) - set(weight_map))
    if unlisted:
        raise CheckpointError(f"{index_path}: tensor {unlisted[0]!r} is in a shard but not in weight_map")
