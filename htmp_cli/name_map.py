"""Hugging Face tensor names as llama.cpp writes them in GGUF, so that layers of one model in two
formats pair (`model.layers.3.self_attn.q_proj.weight` is `blk.3.attn_q.weight`).

The map is the `gguf` package's own (`gguf.get_tensor_name_map`), for the architecture a GGUF
header names. A layer's part suffix (`:expert3`, `:q`) is kept across the mapping.
"""

from __future__ import annotations

import re
from typing import Iterable

_BLOCK = re.compile(r"\.(\d+)\.")


def gguf_names(names: Iterable[str], architecture: str) -> tuple[dict[str, str], dict[str, str]]:
    """Each name's GGUF name under llama.cpp's map for `architecture`, and the names it has none
    for, with why."""
    import gguf

    names = list(names)
    by_name = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    if architecture not in by_name:
        why = f"the gguf package has no tensor-name map for architecture {architecture!r}"
        return {}, {name: why for name in names}
    blocks = 1 + max((int(n) for name in names for n in _BLOCK.findall(name)), default=-1)
    table = gguf.get_tensor_name_map(by_name[architecture], max(blocks, 1))
    mapped, unmapped = {}, {}
    for name in names:
        tensor, colon, part = name.partition(":")
        target = table.get_name(tensor, try_suffixes=(".weight", ".bias"))
        if target is None:
            unmapped[name] = f"no llama.cpp name for it in the gguf package's map for {architecture}"
        else:
            mapped[name] = target + colon + part
    return mapped, unmapped
