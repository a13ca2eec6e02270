"""The CI recipes of docs/check.md, run as written: install htmp from a clone of its repository into a
fresh virtual environment, then the recipe's htmp commands on a checkpoint."""

from __future__ import annotations

import os
import re
import shlex
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from htmp_cli.synthetic import phase_layer
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _recipes() -> dict[str, dict]:
    text = (ROOT / "docs" / "check.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2, "docs/check.md should hold the GitHub Actions and GitLab CI recipes"
    return {"github": yaml.safe_load(blocks[0]), "gitlab": yaml.safe_load(blocks[1])}


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """A new virtual environment that sees this one's packages (numpy, scipy, ...) but not htmp: the
    recipe's `pip install` must put htmp there, from the clone."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    packages = next(Path(p) for p in site.getsitepackages() if p.endswith("site-packages"))
    target = next((venv / "lib").glob("python*/site-packages"))
    # Dependencies from here; htmp itself (installed editable here) is hidden from the new env.
    (target / "deps.pth").write_text(str(packages) + "\n")
    # This machine is offline but for package indexes: the recipe's `pip install` builds htmp only,
    # its dependencies being visible already.
    pip = venv / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\nexec "{venv / "bin" / "python"}" -m pip "$@" --no-deps --no-build-isolation -q\n')
    pip.chmod(0o755)
    return venv


def _run(command: str, cwd: Path, venv: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """One recipe line, as written, in bash, with the fresh environment first on PATH."""
    env = {**env, "PATH": f"{venv / 'bin'}:{env['PATH']}"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _checkpoint(folder: Path) -> None:
    rng = np.random.default_rng(5)
    save_file({f"layers.{k}.weight": phase_layer("bulk+spikes", 400, 200, rng).astype(np.float32) for k in range(3)},
              str(folder / "model.safetensors"))


def test_the_gitlab_recipe_runs_as_written(fresh_venv: Path, tmp_path: Path) -> None:
    script = _recipes()["gitlab"]["htmp-check"]["script"]
    _checkpoint(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, "HTMP_REPOSITORY": f"file://{ROOT}"}
    for command in script:
        result = _run(command, tmp_path, fresh_venv, env)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    installed = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", "import htmp_cli; print(htmp_cli.__file__)"],
                               capture_output=True, text=True, cwd="/")
    assert installed.returncode == 0 and str(ROOT) not in installed.stdout, installed  # the clone's copy
    assert "<testsuite" in (tmp_path / "htmp-junit.xml").read_text()
    assert "htmp check PASSED" in (tmp_path / "htmp-summary.md").read_text()


def test_the_github_recipe_runs_as_written(fresh_venv: Path, tmp_path: Path) -> None:
    steps = _recipes()["github"]["jobs"]["htmp"]["steps"]
    checkouts = [s for s in steps if s.get("uses", "").startswith("actions/checkout") and "with" in s]
    assert [s["with"]["path"] for s in checkouts] == [".htmp"]
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", ".htmp"], cwd=tmp_path, check=True)
    _checkpoint(tmp_path)
    summary = tmp_path / "step-summary.md"
    env = {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, "GITHUB_STEP_SUMMARY": str(summary)}
    commands = [s["run"] for s in steps if "run" in s and "train.py" not in s["run"]]
    assert commands[0].startswith("pip install ./.htmp")
    for command in commands:
        result = _run(command, tmp_path, fresh_venv, env)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    assert "htmp check PASSED" in summary.read_text()
    assert (tmp_path / "htmp-junit.xml").is_file()
