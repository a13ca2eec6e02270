"""Where the spectra are computed: the CPU, or a CUDA GPU through torch.

`--device cuda` is a promise the machine must keep, so it is checked before any work starts and a
machine without a GPU is a usage error. `--device auto` asks torch only when the first matrix large
enough to gain from a GPU comes along (a smaller side of `LARGE_MATRIX_SIZE`): on small models, and
on machines where torch has no GPU, it costs nothing and computes on the CPU.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

from htmp_cli.errors import OptionError
# From this smaller side on a matrix goes to the GPU under --device auto, as torch's CPU solver
# takes over from numpy's at the same size.
from htmp_cli.spectral import LARGE_MATRIX_SIZE

DEVICES = ("auto", "cpu", "cuda")


@lru_cache(maxsize=1)
def cuda_status() -> str | None:
    """None when torch sees a usable CUDA device; otherwise why not, in words."""
    spec = find_spec("torch")
    if spec is None:
        return "torch is not installed (pip install 'htmp-cli[torch]' with a CUDA build of torch)"
    build = _torch_build(spec.submodule_search_locations)
    if build is not None and build["cuda"] is None and build["hip"] is None:
        # A CPU-only build cannot see a GPU: said without importing torch (about a second, which a
        # parallel analysis would spend before starting its workers).
        return f"torch {build['__version__']} (built without CUDA) sees no CUDA device"
    import torch

    if not torch.cuda.is_available():
        build_text = "built without CUDA" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        return f"torch {torch.__version__} ({build_text}) sees no CUDA device"
    return None


def _torch_build(locations) -> dict[str, object] | None:  # type: ignore[no-untyped-def]
    """__version__, cuda and hip from torch's generated version.py, read as constants; None if unsure."""
    try:
        tree = ast.parse(Path(next(iter(locations)), "version.py").read_text(encoding="utf-8"))
        found = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            elif isinstance(node, ast.AnnAssign):
                target = node.target
            else:
                continue
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
                found[target.id] = node.value.value
        return found if {"__version__", "cuda", "hip"} <= found.keys() else None
    except (OSError, StopIteration, TypeError, SyntaxError, ValueError):
        return None


def require_cuda() -> None:
    """Raise the one-line usage error of `--device cuda` on a machine that cannot honour it."""
    reason = cuda_status()
    if reason is not None:
        raise OptionError(f"--device cuda: no GPU available: {reason}; use --device auto or cpu")


def device_for(requested: str, backend: str, M: int) -> str:
    """'cuda' or 'cpu' for one matrix whose smaller side is M."""
    if requested == "cpu" or backend == "numpy":
        return "cpu"
    if requested == "cuda":
        return "cuda"
    return "cuda" if M >= LARGE_MATRIX_SIZE and cuda_status() is None else "cpu"
