"""htmp plot and htmp report: what the figures contain, the fitted curves they draw, and the HTML
report driven in a real headless Chromium (sorting, filtering, a figure, a screenshot, no errors,
no network)."""

from __future__ import annotations

import itertools
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from browser import Browser, find_chromium
from conftest import run_htmp
from safetensors.numpy import save_file
from scipy import integrate

from htmp_cli.fits import curves
from htmp_cli.fits import htmp as htmp_law
from htmp_cli.fits.phases import PHASES
from htmp_cli.pipeline import analyze
from htmp_cli.report import plots
from htmp_cli.report.formats import report_to_dict
from htmp_cli.synthetic import phase_layer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def phases_checkpoint(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """One synthetic layer per phase, named after the phase it was drawn from."""
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("phases") / "phases.safetensors"
    save_file({f"blocks.{k}.{phase}.weight": phase_layer(phase, 600, 300, rng).astype(np.float32)
               for k, phase in enumerate(PHASES)}, str(path))
    return path


@pytest.fixture(scope="module")
def analysed(phases_checkpoint: Path):  # type: ignore[no-untyped-def]
    report = analyze(phases_checkpoint, keep_eigenvalues=True)
    return report_to_dict(report), [layer.eigenvalues for layer in report.layers]


def _texts(fig) -> list:  # type: ignore[no-untyped-def]
    fig.canvas.draw()
    from matplotlib.text import Text

    unique = {id(t): t for t in fig.findobj(Text)}  # a legend's texts are found through the legend and its axes
    return [t for t in unique.values() if t.get_visible() and t.get_text().strip()]


def _overlapping_texts(fig) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
            if box_a.overlaps(box_b) and box_a.intersection(box_a, box_b).width > 1 and box_a.intersection(box_a, box_b).height > 1]


def test_every_phase_gets_an_esd_figure_with_its_fits_and_markers(analysed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, spectra = analysed
    assert len(data["layers"]) == len(PHASES)
    for layer, values in zip(data["layers"], spectra):
        fig = plots.esd_figure(layer, values)
        ax = fig.axes[0]
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        gids = {line.get_gid() for line in ax.lines}
        assert {"power-law", "xmin", "mp", "mp-edge", "htmp"} <= gids, (layer["name"], gids)
        assert any(p.get_gid() == "esd-histogram" for p in ax.patches)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(t.startswith("power law, alpha") for t in legend) and any(t.startswith("HTMP, kappa") for t in legend)
        assert any(t.startswith("xmin") for t in legend) and any("l+" in t for t in legend)
        title = ax.get_title()
        assert layer["name"] in title and "alpha" in title and "kappa" in title and layer["phase"]["phase"] in title
        assert ax.get_xlabel() and ax.get_ylabel()
        assert not _overlapping_texts(fig), _overlapping_texts(fig)
        # The xmin marker sits at the fitted xmin, the edge at l+.
        by_gid = {line.get_gid(): line for line in ax.lines}
        assert by_gid["xmin"].get_xdata()[0] == pytest.approx(layer["power_law"]["xmin"])
        assert by_gid["mp-edge"].get_xdata()[0] == pytest.approx(layer["mp"]["lambda_plus"])
        png, svg = tmp_path / f"{layer['name']}.png", tmp_path / f"{layer['name']}.svg"
        fig.savefig(png)
        fig.savefig(svg)
        plots._pyplot().close(fig)
        assert png.read_bytes()[:8] == PNG_MAGIC
        root = ET.parse(svg).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert {"power-law", "htmp", "mp", "xmin", "mp-edge"} <= {e.get("id") for e in root.iter()}


def test_the_overview_draws_alpha_and_kappa_per_layer_with_the_bands(analysed) -> None:  # type: ignore[no-untyped-def]
    data, _ = analysed
    fig = plots.overview_figure(data["layers"], "phases")
    left, right = fig.axes
    alpha_points = [c for c in left.collections if (c.get_gid() or "").startswith("alpha-")]
    kappa_points = [c for c in right.collections if (c.get_gid() or "").startswith("kappa-")]
    assert len(alpha_points) == len(kappa_points) == len(PHASES)
    for point in alpha_points:
        k = int(point.get_gid().split("-")[1])
        assert point.get_offsets()[0][0] == k and point.get_offsets()[0][1] == pytest.approx(data["layers"][k]["power_law"]["alpha"])
    assert {line.get_gid() for line in left.lines} >= {"alpha-2", "alpha-6"}
    assert right.get_yscale() == "log" and "kappa" in right.get_ylabel() and "alpha" in left.get_ylabel()
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert legend == {layer["phase"]["phase"] for layer in data["layers"]} | {
        "alpha = 2 (below: very heavy-tailed)", "alpha = 6 (above: under-trained)"}
    assert [t.get_text() for t in left.get_xticklabels()] == [layer["name"] for layer in data["layers"]]
    assert not _overlapping_texts(fig), _overlapping_texts(fig)
    plots._pyplot().close(fig)


def test_styles_survive_greyscale_and_colour_blindness() -> None:
    # Okabe-Ito colours, and a distinct marker per phase and line style per curve, so that
    # neither colour vision nor a greyscale printer is needed to tell them apart.
    okabe_ito = {"#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"}
    assert set(plots.PHASE_STYLE) == set(PHASES)
    assert {colour for colour, _ in plots.PHASE_STYLE.values()} <= okabe_ito
    assert len({marker for _, marker in plots.PHASE_STYLE.values()}) == len(PHASES)


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0])
def test_the_fitted_densities_carry_their_share_of_the_eigenvalues(gamma: float) -> None:
    scale, share = 3.0, 0.8
    lo, hi = scale * (1 - gamma**0.5) ** 2, scale * (1 + gamma**0.5) ** 2
    mass, _ = integrate.quad(lambda x: curves.mp_density(np.array([x]), scale, gamma, share)[0], lo, hi, limit=200)
    assert mass == pytest.approx(share, rel=1e-3)
    for orientation in ("direct", "inverse"):
        # Over lambda in [1e-8, 1e8] x scale, in log space where the ends are smooth (Simpson on a fine
        # grid). At gamma = 1 the density near 0 decays like 1/(x log^2 x), so the mass is checked
        # against the CDF, not against 1.
        u = np.log(scale) + np.linspace(-8, 8, 3201) * np.log(10)
        integrand = np.nan_to_num(curves.htmp_density(np.exp(u), 4.0, gamma, scale, orientation, share)) * np.exp(u)
        mass = integrate.simpson(integrand, x=u)
        ends = np.array([1e-8, 1e8])  # the same standardised range in either orientation
        expected = share * float(np.diff(htmp_law.cdf(ends, 4.0, gamma))[0])
        assert mass == pytest.approx(expected, rel=1e-4), orientation
        assert expected > 0.95 * share
    tail, _ = integrate.quad(lambda x: curves.power_law_density(np.array([x]), 2.5, 1.5, 0.1)[0], 1.5, np.inf)
    assert tail == pytest.approx(0.1, rel=1e-6)
    edges, density = curves.esd_histogram(np.array([0.0, 1.0, 2.0, 4.0]))
    assert (density * np.diff(edges)).sum() == pytest.approx(0.75)  # the zero is counted, not drawn


def test_htmp_plot_writes_the_overview_and_the_selected_layers(phases_checkpoint: Path, tmp_path: Path) -> None:
    result = run_htmp("plot", str(phases_checkpoint), "--out", str(tmp_path / "png"), "--layer", "heavy|random")
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.split()]
    assert [p.name for p in written] == ["overview.png", "esd-000-blocks.0.random-like.weight.png",
                                         "esd-004-blocks.4.heavy-tailed.weight.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in written)
    svg = run_htmp("plot", str(phases_checkpoint), "--out", str(tmp_path / "svg"), "-f", "svg", "--layer", "^blocks\\.2\\.")
    names = sorted(p.name for p in (tmp_path / "svg").iterdir())
    assert svg.returncode == 0 and names == ["esd-002-blocks.2.bulk+spikes.weight.svg", "overview.svg"]
    ET.parse(tmp_path / "svg" / names[0])
    none = run_htmp("plot", str(phases_checkpoint), "--out", str(tmp_path / "x"), "--layer", "nothing-like-this")
    assert none.returncode == 2 and "no layer matches" in none.stderr
    assert run_htmp("analyze", str(phases_checkpoint), "-f", "json", "-o", str(tmp_path / "r.json")).returncode == 0
    from_report = run_htmp("plot", str(tmp_path / "r.json"), "--out", str(tmp_path / "report"))
    assert from_report.returncode == 0 and from_report.stdout.split() == [str(tmp_path / "report" / "overview.png")]
    assert "holds no eigenvalues" in from_report.stderr


def _chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.fail("no Chromium: install it (apt-get install chromium); .ci/run does")
    return path


def _report(checkpoint: Path, out: Path) -> Path:
    result = run_htmp("report", str(checkpoint), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_the_html_report_sorts_filters_and_shows_figures_in_a_real_browser(phases_checkpoint: Path, tmp_path: Path) -> None:
    _chromium()
    page = _report(phases_checkpoint, tmp_path / "report.html")
    html = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)  # nothing to fetch
    assert "<dc:date>" not in html  # no run-dependent metadata
    with Browser(tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        assert browser.evaluate("document.querySelectorAll('#layers tbody tr').length") == len(PHASES)
        assert browser.evaluate("document.querySelector('#overview svg') !== null")
        column = browser.evaluate("Array.from(document.querySelectorAll('#layers thead th')).findIndex(th => th.dataset.key === 'alpha')")
        read_alphas = (f"Array.from(document.querySelectorAll('#layers tbody tr')).map(r => r.cells[{column}].dataset.value)")
        browser.evaluate("document.querySelector('th[data-key=alpha]').click()")
        ascending = [float(v) for v in browser.evaluate(read_alphas) if v]
        assert ascending == sorted(ascending) and len(ascending) == len(PHASES)
        browser.evaluate("document.querySelector('th[data-key=alpha]').click()")
        assert [float(v) for v in browser.evaluate(read_alphas) if v] == sorted(ascending, reverse=True)
        browser.evaluate("var f = document.getElementById('layer-filter'); f.value = 'heavy-tailed'; f.dispatchEvent(new Event('input'))")
        visible = browser.evaluate("Array.from(document.querySelectorAll('#layers tbody tr')).filter(r => !r.hidden).map(r => r.textContent)")
        assert visible and all("heavy-tailed" in text for text in visible)
        assert browser.evaluate("document.getElementById('layer-count').textContent") == f"{len(visible)} of {len(PHASES)} shown"
        assert browser.evaluate("document.getElementById('figure-panel').hidden") is True
        browser.evaluate("document.querySelector('#layers tbody tr:not([hidden]) button[data-figure]').click()")
        assert browser.evaluate("document.getElementById('figure-panel').hidden") is False
        figure_text = browser.evaluate("document.querySelector('#figure-panel svg').textContent")
        assert "power law, alpha" in figure_text and "HTMP, kappa" in figure_text
        browser.settle()
        shot = browser.screenshot(tmp_path / "report.png")
        assert shot[:8] == PNG_MAGIC and len(shot) > 20_000
        assert browser.problems() == []


def test_the_browser_check_catches_script_errors_and_network_requests(tmp_path: Path) -> None:
    # The control: the same checks on a page that breaks both rules must report both.
    _chromium()
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><img src='http://127.0.0.1:9/x.png'>"
                   "<script>undefinedFunction();</script></body></html>")
    with Browser(tmp_path / "profile") as browser:
        browser.open(bad.as_uri())
        browser.settle()
        found = browser.problems()
    assert any(p.startswith("exception") and "undefinedFunction" in p for p in found), found
    assert any(p.startswith("network request: http://127.0.0.1:9/x.png") for p in found), found


def test_the_scan_report_lists_checkpoints_correlations_and_the_scatter(tmp_path: Path) -> None:
    _chromium()
    rng = np.random.default_rng(2)
    base = {f"layers.{k}.weight": phase_layer("bulk+spikes", 300, 150, rng).astype(np.float32) for k in range(2)}
    for k in range(4):
        save_file({name: (w * 10 ** (k / 8)).astype(np.float32) for name, w in base.items()}, str(tmp_path / f"m{k}.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    (tmp_path / "labels.csv").write_text("checkpoint,accuracy\n" + "".join(f"m{k},{0.6 + k / 10}\n" for k in range(4)))
    page = tmp_path / "scan.html"
    result = run_htmp("scan", str(tmp_path), "--db", str(tmp_path / "s.sqlite"), "--labels", str(tmp_path / "labels.csv"),
                      "--report", str(page))
    assert result.returncode == 3, result.stderr  # broken.safetensors failed, and is in the report
    with Browser(tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        assert browser.evaluate("document.querySelectorAll('#checkpoints tbody tr').length") == 5
        assert browser.evaluate("document.querySelectorAll('#checkpoints tbody tr.failed').length") == 1
        assert browser.evaluate("document.querySelector('#scatter svg') !== null")
        assert browser.evaluate("document.querySelectorAll('#correlations tbody tr').length") >= 10
        column = browser.evaluate("Array.from(document.querySelectorAll('#checkpoints thead th')).findIndex(th => th.dataset.key === 'accuracy')")
        browser.evaluate(f"document.querySelectorAll('#checkpoints thead th')[{column}].click()")
        labels = browser.evaluate(f"Array.from(document.querySelectorAll('#checkpoints tbody tr')).map(r => r.cells[{column}].dataset.value)")
        assert [float(v) for v in labels[:4]] == pytest.approx([0.6, 0.7, 0.8, 0.9]) and labels[4] == ""
        browser.settle()
        assert browser.problems() == []
    assert json.loads(json.dumps(browser.events[:1]))  # events are plain JSON


def test_two_reports_of_one_checkpoint_differ_only_in_the_timings(phases_checkpoint: Path, tmp_path: Path) -> None:
    first = _report(phases_checkpoint, tmp_path / "a.html").read_text().splitlines()
    second = _report(phases_checkpoint, tmp_path / "b.html").read_text().splitlines()
    assert len(first) == len(second)
    differing = [(a, b) for a, b in zip(first, second) if a != b]
    assert all(a.startswith("<li>time: ") and b.startswith("<li>time: ") for a, b in differing), differing[:2]
