"""Start-up: importing the CLI, `htmp --version` and `htmp ls` load none of the heavy libraries.

scipy.optimize alone took 0.38 s to import, more than the rest of `htmp --version`; torch,
matplotlib and pandas take longer still. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("scipy", "scipy.optimize", "scipy.special", "torch", "matplotlib", "pandas")

_LOADED = (
    "import contextlib, io, json, sys\n"
    "{body}\n"
    "print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
)
_RUN_CLI = (
    "from htmp_cli.cli import main\n"
    "sys.argv = ['htmp', *{args!r}]\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    try:\n"
    "        main()\n"
    "    except SystemExit as exit:\n"
    "        assert exit.code in (0, None), exit.code\n"
)


def _heavy_modules_after(body: str) -> list[str]:
    """The heavy modules loaded by a fresh interpreter that ran `body`."""
    code = _LOADED.format(body=body, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_probe_sees_a_heavy_import() -> None:
    assert _heavy_modules_after("import scipy.optimize") == ["scipy", "scipy.optimize", "scipy.special"]


@pytest.mark.parametrize("modules", [("htmp_cli.cli",), ("htmp_cli.cli", "htmp_cli.fits.htmp", "htmp_cli.fits.phases")])
def test_importing_the_cli_and_the_fits_loads_no_heavy_library(modules: tuple[str, ...]) -> None:
    assert _heavy_modules_after("\n".join(f"import {m}" for m in modules)) == []


@pytest.mark.parametrize("args", [("--version",), ("ls", "fixtures/demo_model.safetensors")])
def test_version_and_ls_load_no_heavy_library(args: tuple[str, ...]) -> None:
    assert _heavy_modules_after(_RUN_CLI.format(args=args)) == []
