"""htmp plot and htmp report: what the figures contain, the fitted curves they draw, and the HTML
report driven in a real headless Chromium (sorting, filtering, a figure, a screenshot, no errors,
no network)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from html.parser import HTMLParser
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
from htmp_cli.report.formats import TABLE_COLUMNS
from htmp_cli.report.html import analysis_html, scan_html, scoped_ids
from htmp_cli.results import Report
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
def analysed(phases_checkpoint: Path) -> Report:
    return analyze(phases_checkpoint, keep_eigenvalues=True)


def _texts(fig) -> list:  # type: ignore[no-untyped-def]
    plots.draw(fig)
    from matplotlib.text import Text

    unique = {id(t): t for t in fig.findobj(Text)}  # a legend's texts are found through the legend and its axes
    # Ticks past the view limits keep their labels (visible, but never drawn), wherever they fall.
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 * abs(hi - lo) <= tick.get_loc() <= hi + 1e-9 * abs(hi - lo):
                    undrawn |= {id(tick.label1), id(tick.label2)}
    return [t for key, t in unique.items() if key not in undrawn and t.get_visible() and t.get_text().strip()]


def _overlapping_texts(fig) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
            if box_a.overlaps(box_b) and box_a.intersection(box_a, box_b).width > 1 and box_a.intersection(box_a, box_b).height > 1]


def test_every_phase_gets_an_esd_figure_with_its_fits_and_markers(analysed: Report, tmp_path: Path) -> None:
    assert len(analysed.layers) == len(PHASES)
    for layer in analysed.layers:
        fig = plots.esd_figure(layer)
        ax = fig.axes[0]
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        gids = {line.get_gid() for line in ax.lines}
        assert {"power-law", "xmin", "mp", "mp-edge", "htmp"} <= gids, (layer.name, gids)
        assert any(p.get_gid() == "esd-histogram" for p in ax.patches)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(t.startswith("power law, alpha") for t in legend) and any(t.startswith("HTMP, kappa") for t in legend)
        assert any(t.startswith("xmin") for t in legend) and any("l+" in t for t in legend)
        title = ax.get_title()
        assert layer.name in title and "alpha" in title and "kappa" in title and layer.phase.phase in title
        assert ax.get_xlabel() and ax.get_ylabel()
        assert not _overlapping_texts(fig), _overlapping_texts(fig)
        # The xmin marker sits at the fitted xmin, the edge at l+.
        by_gid = {line.get_gid(): line for line in ax.lines}
        assert by_gid["xmin"].get_xdata()[0] == pytest.approx(layer.power_law.xmin)
        assert by_gid["mp-edge"].get_xdata()[0] == pytest.approx(layer.mp.lambda_plus)
        png, svg = tmp_path / f"{layer.name}.png", tmp_path / f"{layer.name}.svg"
        plots.save(fig, png)
        plots.save(fig, svg)
        assert png.read_bytes()[:8] == PNG_MAGIC
        root = ET.parse(svg).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert {"power-law", "htmp", "mp", "xmin", "mp-edge"} <= {e.get("id") for e in root.iter()}
    # In a page, each figure's ids carry its prefix, and so does every reference to one.
    markup = plots.svg_markup(fig)
    assert _id_references(markup)  # clip paths and markers: the check below is not vacuous
    scoped = scoped_ids(markup, "esd-5-")
    ids = [e.get("id") for e in ET.fromstring(scoped).iter() if e.get("id") is not None]
    assert ids and all(i.startswith("esd-5-") for i in ids) and len(ids) == len(set(ids))
    assert {"esd-5-power-law", "esd-5-htmp", "esd-5-mp", "esd-5-xmin", "esd-5-mp-edge"} <= set(ids)
    assert set(_id_references(scoped)) <= set(ids)
    assert scoped.replace("esd-5-", "") == markup  # nothing else changed


def _id_references(svg: str) -> list[str]:
    """The ids an SVG refers to: url(#...) in attributes and styles, and href / xlink:href="#..."."""
    return re.findall(r"url\(#([^)]+)\)", svg) + re.findall(r'href="#([^"]+)"', svg)


def test_the_overview_draws_alpha_and_kappa_per_layer_with_the_bands(analysed: Report) -> None:
    layers = analysed.layers
    fig = plots.overview_figure(layers, "phases")
    left, right = fig.axes
    alpha_points = [c for c in left.collections if (c.get_gid() or "").startswith("alpha-")]
    kappa_points = [c for c in right.collections if (c.get_gid() or "").startswith("kappa-")]
    assert len(alpha_points) == len(kappa_points) == len(PHASES)
    for point in alpha_points:
        k = int(point.get_gid().split("-")[1])
        assert point.get_offsets()[0][0] == k and point.get_offsets()[0][1] == pytest.approx(layers[k].power_law.alpha)
    # The lines' ids differ from the points' (alpha-K for layer K): ids must be unique in an SVG.
    assert {line.get_gid() for line in left.lines} >= {"alpha-line-2", "alpha-line-6"}
    assert right.get_yscale() == "log" and "kappa" in right.get_ylabel() and "alpha" in left.get_ylabel()
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert legend == {layer.phase.phase for layer in layers} | {
        "alpha = 2 (below: very heavy-tailed)", "alpha = 6 (above: under-trained)"}
    assert [t.get_text() for t in left.get_xticklabels()] == [layer.name for layer in layers]
    assert not _overlapping_texts(fig), _overlapping_texts(fig)


def _inside(box, outer) -> bool:  # type: ignore[no-untyped-def]
    return outer.x0 <= box.x0 and box.x1 <= outer.x1 and outer.y0 <= box.y0 and box.y1 <= outer.y1


@pytest.mark.parametrize("layout", ["edges", "crowd"])
def test_scatter_names_stay_inside_the_figure_and_apart(layout: str) -> None:
    if layout == "edges":
        # Corners and edges, where a name to the right of (or above) its point would leave the axes.
        x, y = [0.0, 10.0, 0.0, 10.0, 5.0, 10.0, 5.0], [0.0, 0.0, 1.0, 1.0, 0.5, 0.5, 1.0]
        names = ["run-bottom-left-0001", "run-bottom-right-0002", "run-top-left-0003", "run-top-right-0004",
                 "run-middle-0005", "run-right-edge-0006", "run-top-edge-0007"]
    else:
        rng = np.random.default_rng(4)
        x, y = list(rng.normal(size=40)), list(rng.normal(size=40))
        names = [f"checkpoint-{k:03d}" for k in range(40)]
    fig = plots.correlation_figure(x, y, names, "alpha", "accuracy", 0.5, 0.4)
    ax = fig.axes[0]
    texts = _texts(fig)
    renderer = fig.canvas.get_renderer()
    placed = [t for t in ax.texts if t.get_visible()]
    assert {t.get_text() for t in placed} <= set(names)
    if layout == "edges":
        assert sorted(t.get_text() for t in placed) == sorted(names)  # room for every name: none is dropped
    else:
        assert len(placed) >= 10
    for text in texts:
        assert _inside(text.get_window_extent(renderer), fig.bbox), text.get_text()
    for text in placed:
        assert _inside(text.get_window_extent(renderer), ax.get_window_extent(renderer)), text.get_text()
    assert not _overlapping_texts(fig), _overlapping_texts(fig)


def test_styles_survive_greyscale_and_colour_blindness() -> None:
    # Okabe-Ito colours, and a distinct marker per phase and line style per curve, so that
    # neither colour vision nor a greyscale printer is needed to tell them apart.
    okabe_ito = {"#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"}
    styles = [*plots.PHASE_STYLE.values(), plots.FAILED_STYLE]
    assert set(PHASES) <= set(plots.PHASE_STYLE)
    assert {colour for colour, _ in styles} <= okabe_ito
    assert len({colour for colour, _ in styles}) == len({marker for _, marker in styles}) == len(styles)


def test_figures_leave_the_callers_matplotlib_settings_alone(analysed: Report, tmp_path: Path) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"font.size": 13.0, "svg.fonttype": "path", "svg.hashsalt": None}):
        before = {key: matplotlib.rcParams[key] for key in ("font.size", "axes.titlesize", "svg.fonttype", "svg.hashsalt")}
        figures = plt.get_fignums()
        fig = plots.esd_figure(analysed.layers[0])
        plots.save(fig, tmp_path / "esd.png")
        svg = plots.svg_markup(fig)
        scatter = plots.correlation_figure([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], ["a", "b", "c"], "alpha", "acc", 0.5, 0.3)
        assert {key: matplotlib.rcParams[key] for key in before} == before
        assert plt.get_fignums() == figures  # no figure was left in (or taken from) pyplot's list
        # Our style still holds inside the figures: 9-point text, text kept as text in the SVG.
        assert fig.axes[0].xaxis.label.get_fontsize() == 9 and scatter.axes[0].yaxis.label.get_fontsize() == 9
        assert "<text" in svg and "<path id=\"DejaVuSans" not in svg


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
        pytest.fail("no Chromium: install it (apt-get install chromium); make test does where it may")
    return path


class _IdCounter(HTMLParser):
    """Every id attribute of a page, template contents included (the parser does not know templates)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: Counter[str] = Counter()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value is not None)


def _duplicate_ids(html: str) -> dict[str, int]:
    counter = _IdCounter()
    counter.feed(html)
    assert counter.ids  # the parser saw the page
    return {name: n for name, n in counter.ids.items() if n > 1}


# In the page: ids held by more than one element, and references (url(#...), href="#...") inside an
# SVG that resolve to nothing or to an element of another figure. With how many references there were.
_DUPLICATE_IDS_JS = """(() => { const seen = {};
  document.querySelectorAll('[id]').forEach(e => { seen[e.id] = (seen[e.id] || 0) + 1; });
  return Object.keys(seen).filter(k => seen[k] > 1); })()"""
_BROKEN_REFERENCES_JS = """(() => { const broken = []; let n = 0;
  document.querySelectorAll('svg *').forEach(el => {
    for (const a of el.attributes) {
      const refs = Array.from(a.value.matchAll(/url\\(#([^)]+)\\)/g), m => m[1]);
      if ((a.name === 'href' || a.name === 'xlink:href') && a.value.startsWith('#')) { refs.push(a.value.slice(1)); }
      for (const id of refs) {
        n += 1;
        const target = document.getElementById(id);
        if (!target || !el.closest('svg').contains(target)) { broken.push(id); }
      }
    }
  });
  return {references: n, broken: broken}; })()"""
# The panel is emptied first: it holds a copy of the figure it shows, which is its template's own.
_OPEN_EVERY_TEMPLATE_JS = """(() => { document.querySelector('#figure-panel .figure').innerHTML = '';
  const host = document.createElement('div'); host.id = 'every-template';
  document.body.appendChild(host);
  document.querySelectorAll('template').forEach(t => host.appendChild(t.content.cloneNode(true)));
  return host.querySelectorAll('svg').length; })()"""


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
        # Ids: unique with the overview and an open figure, every reference resolving within its figure,
        # and the opened figure draws its curves (found by their prefixed ids) with a size.
        assert browser.evaluate(_DUPLICATE_IDS_JS) == []
        shown = browser.evaluate("document.querySelector('#layers tbody tr:not([hidden]) button[data-figure]').dataset.figure")
        for curve in ("power-law", "mp", "htmp", "xmin", "mp-edge"):
            box = browser.evaluate(f"(() => {{ const g = document.querySelector('#figure-panel #{shown}-{curve}'); "
                                   "const b = g.getBBox(); return [b.width, b.height, g.querySelectorAll('path').length]; })()")
            assert box[2] >= 1 and max(box[0], box[1]) > 0, (curve, box)
        references = browser.evaluate(_BROKEN_REFERENCES_JS)
        assert references["references"] > 100 and references["broken"] == [], references["broken"][:5]
        browser.settle()
        shot = browser.screenshot(tmp_path / "report.png")
        assert shot[:8] == PNG_MAGIC and len(shot) > 20_000
        # Every figure in the page at once: still no id twice, still every reference at home.
        assert browser.evaluate(_OPEN_EVERY_TEMPLATE_JS) == len(PHASES)
        assert browser.evaluate(_DUPLICATE_IDS_JS) == []
        references = browser.evaluate(_BROKEN_REFERENCES_JS)
        assert references["references"] > 300 and references["broken"] == [], references["broken"][:5]
        assert browser.problems() == []
    assert _duplicate_ids(html) == {}


# The layer table at 1280 px: where each column's header ends, whether the table or the page
# scrolls sideways, and which headers show.
_TABLE_GEOMETRY_JS = """(() => {
  const table = document.getElementById('layers'), wide = table.parentElement, root = document.documentElement;
  const box = table.getBoundingClientRect();
  const heads = {};
  for (const th of table.tHead.rows[0].cells) {
    if (th.dataset.key) { heads[th.dataset.key] = {right: th.getBoundingClientRect().right, width: th.offsetWidth}; }
  }
  return {innerWidth: innerWidth, viewport: root.clientWidth, left: box.left, right: box.right,
          wideScroll: wide.scrollWidth, wideClient: wide.clientWidth, pageScroll: root.scrollWidth, heads: heads}; })()"""
# Cut: the text is wider than its box (scrollWidth rounds, and a fraction of a pixel short already
# puts an ellipsis in place of the last letter).
_NAME_CELLS_JS = """(() => {
  function cut(element) {
    const range = document.createRange();
    range.selectNodeContents(element);
    return range.getBoundingClientRect().width > element.getBoundingClientRect().width + 0.01;
  }
  return Array.from(document.querySelectorAll('#layers tbody td.k-name'), td => ({
    title: td.title, text: td.textContent, headCut: cut(td.querySelector('.head')), tailCut: cut(td.querySelector('.tail'))}));
})()"""
_MAIN_COLUMNS = ("name", "shape", "alpha", "kappa", "phase", "warning")


def _check_the_table_fits(browser: Browser) -> dict:  # type: ignore[type-arg]
    geometry = browser.evaluate(_TABLE_GEOMETRY_JS)
    assert geometry["innerWidth"] == 1280
    assert 0 <= geometry["left"] and geometry["right"] <= geometry["viewport"] <= 1280, geometry
    assert geometry["wideScroll"] <= geometry["wideClient"] and geometry["pageScroll"] <= geometry["viewport"], geometry
    heads = geometry["heads"]
    for key in _MAIN_COLUMNS:
        assert heads[key]["width"] > 0 and heads[key]["right"] <= 1280, (key, heads[key])
    hidden = [key for _, key in TABLE_COLUMNS if key not in _MAIN_COLUMNS]
    assert hidden and all(heads[key]["width"] == 0 for key in hidden), heads  # behind the box, not lost
    return geometry


def test_the_layer_table_of_minilm_fits_a_1280_px_window(minilm_path: Path, tmp_path: Path) -> None:
    """MiniLM-L6's real layers (names, shapes, phase summaries, warnings); then the same with one
    name far too long for its column, which is cut with an ellipsis in the middle."""
    _chromium()
    report = analyze(minilm_path)
    assert len(report.layers) == 39
    # Stand-in figures: the table is what is measured, and each row still gets its ESD button.
    stub = {k: '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>' for k in range(len(report.layers))}
    real = tmp_path / "minilm.html"
    real.write_text(analysis_html(report, None, stub))
    minilm_names = [layer.name for layer in report.layers]
    long_name = "model.language_model.decoder.transformer_blocks.layers.17.self_attention_with_rotary_embeddings.query_key_value.weight"
    layers = list(report.layers)
    layers[1] = dataclasses.replace(layers[1], name=long_name)
    long = tmp_path / "long.html"
    long.write_text(analysis_html(dataclasses.replace(report, layers=tuple(layers)), None, stub))
    with Browser(tmp_path / "profile", width=1280, height=900) as browser:
        browser.open(real.as_uri())
        _check_the_table_fits(browser)
        names = browser.evaluate(_NAME_CELLS_JS)
        assert [n["title"] for n in names] == [n["text"] for n in names] == minilm_names
        assert not [n for n in names if n["headCut"] or n["tailCut"]]  # MiniLM's names fit whole
        # Every column behind the box comes back when it is ticked; then only the table scrolls, not the page.
        browser.evaluate("document.querySelector('label[for=all-columns]').click()")
        heads = browser.evaluate(_TABLE_GEOMETRY_JS)
        assert all(head["width"] > 0 for head in heads["heads"].values()) and len(heads["heads"]) == len(TABLE_COLUMNS)
        assert heads["pageScroll"] <= heads["viewport"], heads
        browser.open(long.as_uri())
        _check_the_table_fits(browser)
        cut = browser.evaluate(_NAME_CELLS_JS)[1]
        assert cut["title"] == cut["text"] == long_name  # whole in the title and the text (for filter and copy)
        assert cut["headCut"] and not cut["tailCut"], cut  # the start and "query_key_value.weight" show
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
    # A constant label has no ranking: its correlations are NaN, which the terminal shows as "-".
    (tmp_path / "labels.csv").write_text("checkpoint,accuracy,batch\n" + "".join(f"m{k},{0.6 + k / 10},32\n" for k in range(4)))
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
        cells = browser.evaluate("Array.from(document.querySelectorAll('td'), td => td.textContent.trim().toLowerCase())")
        assert "nan" not in cells and "inf" not in cells
        constant = browser.evaluate("Array.from(document.querySelectorAll('#correlations tbody tr'))"
                                    ".filter(r => r.cells[0].textContent === 'batch').map(r => Array.from(r.cells, c => c.textContent))")
        assert constant and all(row[3:] == ["-", "-", "-", "-"] for row in constant), constant[:2]
        # The scatter's names, drawn by the browser's own font, stay inside the figure.
        outside = browser.evaluate("""(() => { const svg = document.querySelector('#scatter svg').getBoundingClientRect();
          return Array.from(document.querySelectorAll('#scatter svg text'), t => [t.textContent, t.getBoundingClientRect()])
            .filter(([_, b]) => b.left < svg.left || b.right > svg.right || b.top < svg.top || b.bottom > svg.bottom)
            .map(([text]) => text); })()""")
        assert outside == []
        assert browser.evaluate(_DUPLICATE_IDS_JS) == [] and browser.evaluate(_BROKEN_REFERENCES_JS)["broken"] == []
        browser.settle()
        assert browser.problems() == []
    assert _duplicate_ids(page.read_text()) == {}
    assert json.loads(json.dumps(browser.events[:1]))  # events are plain JSON


def test_a_scan_report_shows_missing_and_undefined_numbers_as_the_terminal_does() -> None:
    nan = float("nan")
    columns = [("checkpoint", "checkpoint", False), ("mean alpha", "mean_alpha", True), ("acc", "acc", True)]
    rows = [{"checkpoint": "a", "mean_alpha": 3.5, "acc": nan}, {"checkpoint": "b", "mean_alpha": None, "acc": 0.5}]
    found = [{"label": "acc", "metric": "alpha", "n": 3, "spearman_rho": nan, "spearman_p": nan, "kendall_tau": nan,
              "kendall_p": nan}]
    html = scan_html("t", columns, rows, [], found, None, [])
    cells = re.findall(r'<td class="[^"]*" data-value="([^"]*)">([^<]*)</td>', html)
    assert len(cells) == 6 + 7
    assert ("", "-") in cells and ("3.5", "3.500") in cells
    assert not [c for c in cells if "nan" in c[0].lower() or "nan" in c[1].lower()]
    assert cells[-4:] == [("", "-")] * 4  # sorted last either way, like a missing value


def test_two_reports_of_one_checkpoint_differ_only_in_the_timings(phases_checkpoint: Path, tmp_path: Path) -> None:
    first = _report(phases_checkpoint, tmp_path / "a.html").read_text().splitlines()
    second = _report(phases_checkpoint, tmp_path / "b.html").read_text().splitlines()
    assert len(first) == len(second)
    differing = [(a, b) for a, b in zip(first, second) if a != b]
    assert all(a.startswith("<li>time: ") and b.startswith("<li>time: ") for a, b in differing), differing[:2]
