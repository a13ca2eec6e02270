"""docs/python.md, executed as written in a real Jupyter kernel (nbclient): every block runs, the
Report shows as a table and the figures as images."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "python.md").read_text(), flags=re.S)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):  # type: ignore[no-untyped-def]
    # What docs/python.md tells a Jupyter user to run first.
    cells = [nbformat.v4.new_code_cell("%matplotlib inline")] + [nbformat.v4.new_code_cell(code) for code in _blocks()]
    notebook = nbformat.v4.new_notebook(cells=cells)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path_factory.mktemp("notebook"))}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a block fails
    return notebook


def test_every_example_runs_and_a_report_shows_as_a_table(executed) -> None:  # type: ignore[no-untyped-def]
    outputs = [output for cell in executed.cells for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("<table" in html and "encoder.layer.0.attention.self.query.weight" in html for html in tables)


def test_the_figures_show_as_images(executed) -> None:  # type: ignore[no-untyped-def]
    cell = next(c for c in executed.cells if c.source.startswith('report.plot("'))
    assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.outputs


def test_the_dataframe_shows_numbers(executed) -> None:  # type: ignore[no-untyped-def]
    cell = next(c for c in executed.cells if c.source.startswith("frame = report.to_dataframe()"))
    html = next(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))
    assert "kappa_orientation" in html and ("direct" in html or "inverse" in html)


def test_the_readme_example_runs_in_a_fresh_interpreter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_examples_run_in_a_plain_interpreter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "\n".join(_blocks())], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "overview.png").stat().st_size > 0


def test_the_training_guide_runs_in_a_plain_interpreter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """docs/training.md: the Monitor, its log, the background mode, a stop rule, a Trainer and a
    Lightning run, in order, as a user would paste them."""
    import subprocess
    import sys

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "training.md").read_text(), flags=re.S)
    done = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run.jsonl").is_file() and (tmp_path / "hf-run" / "htmp.jsonl").is_file()
    assert "[5, 10]" in done.stdout and "False None" in done.stdout
