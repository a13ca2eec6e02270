"""The terminal table at the widths people have (through a real pseudo-terminal), piped, and to a file."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from htmp_cli.report.formats import flat_layer_row, format_number, kappa_text
from htmp_cli.report.table import ASKED_FOR, COLUMNS, ELLIPSIS, plan_layout, shorten_middle, shorten_name, shortened_names
from htmp_cli.results import Report, read_report
from tests.conftest import run_htmp

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], columns: int, cwd: Path | None = None) -> str:
    """`python -m htmp_cli ARGS` with its stdout and stderr on a pseudo-terminal `columns` wide."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-m", "htmp_cli", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=cwd, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=30) == 0
    return ANSI.sub("", b"".join(chunks).decode("utf-8")).replace("\r\n", "\n")


@pytest.fixture(scope="module")
def minilm_report(minilm_path: Path, tmp_path_factory) -> tuple[Path, Report]:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("table") / "minilm.json"
    assert run_htmp("analyze", str(minilm_path), "-f", "json", "-o", str(path)).returncode == 0
    return path, read_report(path)


def _rows(text: str) -> list[str]:
    return text.splitlines()


def _row_of(lines: list[str], shown_name: str) -> str:
    matches = [line for line in lines if line.startswith(shown_name + " ")]
    assert len(matches) == 1, (shown_name, matches)
    return matches[0]


def _header(lines: list[str]) -> list[str]:
    header = next(line for line in lines if line.startswith("name "))
    return header.split()


def _check_terminal_table(text: str, report: Report, columns: int) -> None:
    lines = _rows(text)
    assert max(len(line) for line in lines) <= columns, max(lines, key=len)
    header = _header(lines)
    assert header[:5] == ["name", "shape", "alpha", "kappa", "phase"]
    assert "!" in header or "warning" in header
    start = next(k for k, line in enumerate(lines) if line.startswith("name ")) + 2  # past the rule
    rows = lines[start:start + len(report.layers)]
    shown = [line.split(" ")[0] for line in rows]
    assert len(set(shown)) == len(shown), "two layers look alike"
    for layer, line, name in zip(report.layers, rows, shown):
        row = flat_layer_row(layer)
        full = layer.name
        if name != full:  # shortened: never to nothing, the last part and every block number kept
            assert len(name) >= 12 and full.removesuffix(".weight").endswith(name.split(".")[-1]), (full, name)
            assert re.findall(r"\d+", full) == re.findall(r"\d+", name), (full, name)
        cells = line.split()
        # Every number whole: the exact strings of the JSON values, never a prefix of them.
        assert row["shape"] in cells
        assert format_number(row["alpha"]) in cells
        assert kappa_text(row).split()[0] in cells
        assert row["phase"].split(":")[0] in line
    # This report has no optional evidence (--vectors): its columns are not candidates, not left out.
    assert all(layer.vectors is None for layer in report.layers)
    hidden = [c.key for c in COLUMNS if c.label not in header and c.key != "warn" and c.key not in ASKED_FOR]
    if hidden:
        note = re.search(r"\(columns left out[^)]*\)", " ".join(line.strip() for line in lines)).group(0)
        for key in hidden:
            assert key in note, (key, note)
        assert "--wide" in note and "--columns" in note


@pytest.mark.parametrize("columns", [80, 100, 120, 200])
def test_the_table_fits_the_terminal_it_lands_in(minilm_report: tuple[Path, Report], columns: int) -> None:
    path, report = minilm_report
    text = run_in_terminal(["analyze", str(path)], columns)
    _check_terminal_table(text, report, columns)


def test_a_fresh_analysis_in_a_120_column_terminal(minilm_path: Path, minilm_report: tuple[Path, Report]) -> None:
    text = run_in_terminal(["analyze", str(minilm_path)], 120)
    _check_terminal_table(text, minilm_report[1], 120)


def _check_complete(text: str, report: Report) -> None:
    lines = _rows(text)
    header = _header(lines)
    assert header == [c.label for c in COLUMNS if c.key != "warn" and c.key not in ASKED_FOR]  # no --vectors here
    assert ELLIPSIS not in text and "left out" not in text
    for layer in report.layers:
        line = _row_of(lines, layer.name)
        row = flat_layer_row(layer)
        assert row["phase"].partition(": ")[2] in line  # the reason, whole
        for key in ("alpha", "D", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank"):
            assert format_number(row[key]) in line.split()


def test_piped_and_written_to_a_file_the_table_is_complete(minilm_report: tuple[Path, Report], tmp_path: Path) -> None:
    path, report = minilm_report
    piped = run_htmp("analyze", str(path), env={"COLUMNS": "80"})
    assert piped.returncode == 0
    _check_complete(piped.stdout, report)
    out = tmp_path / "table.txt"
    assert run_htmp("analyze", str(path), "-o", str(out), env={"COLUMNS": "80"}).returncode == 0
    _check_complete(out.read_text(), report)
    wide = run_in_terminal(["analyze", str(path), "--wide"], 100)
    _check_complete(wide, report)


def test_columns_chooses_the_columns(minilm_report: tuple[Path, Report]) -> None:
    path, report = minilm_report
    text = run_in_terminal(["analyze", str(path), "--columns", "name,stable_rank,phase"], 100)
    assert _header(_rows(text)) == ["name", "stable_rank", "phase"]
    bad = run_htmp("analyze", str(path), "--columns", "name,alfa")
    assert bad.returncode == 2 and "unknown column 'alfa'" in bad.stderr and "stable_rank" in bad.stderr


def test_names_shorten_keeping_what_tells_layers_apart_never_to_nothing() -> None:
    name = "model.layers.17.self_attn.q_proj.weight"
    for width in (16, 20, 30):
        short = shorten_middle(name, width)
        assert len(short) == width and short.startswith("model.") and short.endswith("weight") and ELLIPSIS in short
    assert shorten_middle(name, 100) == name == shorten_name(name, 100)
    assert shorten_name(name, 35) == "model.layers.17.self_attn.q_proj"  # ".weight" goes first
    assert shorten_name(name, 20) == "m.l.17.self_a.q_proj"
    assert len(shorten_name(name, 12)) == 12 and ELLIPSIS in shorten_name(name, 12)
    # the four projections of a block stay apart at the narrowest name column
    projections = [f"model.layers.10.self_attn.{p}_proj.weight" for p in "qkvo"]
    short = shortened_names(projections, 16)
    assert len(set(short)) == 4 and all(len(s) <= 16 and "10" in s for s in short)
    cells = [{c.key: "x" * 3 for c in COLUMNS} | {"name": name * 3}]
    layout = plan_layout(cells, 40)
    assert layout.name_width == 16 and layout.left_out  # squeezed to the minimum, the rest named


def test_below_the_required_width_lines_grow_rather_than_numbers_being_cut(minilm_report: tuple[Path, Report]) -> None:
    path, report = minilm_report
    text = run_in_terminal(["analyze", str(path)], 50)
    lines = text.splitlines()
    for layer in report.layers[:5]:
        row = flat_layer_row(layer)
        line = next(line for line in lines if row["shape"] + " " in line and format_number(row["alpha"]) in line)
        assert kappa_text(row).split()[0] in line.split()


def test_ls_piped_keeps_every_name_on_one_line(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    names = [f"model.encoder.layers.{k}.self_attention.query_key_value_projection.weight" for k in range(3)]
    path = tmp_path / "long.safetensors"
    save_file({n: np.zeros((16, 16), dtype=np.float32) for n in names}, str(path))
    result = run_htmp("ls", str(path), env={"COLUMNS": "60"})
    assert result.returncode == 0
    for name in names:
        assert sum(name in line for line in result.stdout.splitlines()) == 1
    help_text = run_htmp("ls", "--help").stdout
    assert "<table|json>" in help_text and "csv" not in help_text


def test_a_number_the_json_holds_as_null_shows_as_missing_in_every_view() -> None:
    """A NaN in a fresh report is null in its JSON and NaN again when read back: every view shows
    it as missing, the same for the fresh report and the saved one."""
    import csv
    import dataclasses
    import io
    import math

    import numpy as np
    from rich.console import Console

    import htmp_cli
    from htmp_cli.report.formats import to_csv, to_markdown
    from htmp_cli.report.table import render_table

    report = htmp_cli.analyze(np.random.default_rng(8).standard_normal((200, 80)))
    layer = report.layers[0]
    broken = dataclasses.replace(layer, metrics=dataclasses.replace(layer.metrics, stable_rank=math.nan))
    fresh = dataclasses.replace(report, layers=(broken,),
                                summary=dataclasses.replace(report.summary, means={**report.summary.means, "alpha": math.nan}))
    saved = Report.from_json(fresh.to_json())
    assert math.isnan(saved.layers[0].metrics.stable_rank)

    def table(r: Report) -> str:
        out = io.StringIO()
        render_table(r, Console(file=out, width=200, no_color=True), complete=True)
        return out.getvalue()

    for view in (to_csv, to_markdown, table):
        assert view(fresh) == view(saved), view.__name__
        assert "nan" not in view(fresh), view.__name__
    (row,) = csv.DictReader(io.StringIO(to_csv(fresh)))
    assert row["stable_rank"] == ""
    assert "mean alpha -," in to_markdown(fresh)
    assert flat_layer_row(saved.layers[0])["stable_rank"] is None and format_number(None) == "-"
