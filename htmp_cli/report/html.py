"""One self-contained HTML file: no network, no CDN; figures inline as SVG, tables sortable and filterable.

A Content-Security-Policy forbids every request the page could make, so a stray reference to the
network would fail loudly (a console error) instead of leaking.
"""

from __future__ import annotations

import math
import re
from html import escape
from typing import Any, Iterable

from htmp_cli import __version__
from htmp_cli.report.formats import (COMPOSED_CELLS, cell_text, flat_layer_row, format_number, report_columns,
                                     skipped_shape, summary_lines)
from htmp_cli.report.plots import FAILED_STYLE, PHASE_STYLE
from htmp_cli.results import Report
from htmp_cli.trajectory import RuleSpan, Trajectory, summary_table

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1em 2em 3em; color: #1a1a1a; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; word-break: break-all; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; }
thead th { position: sticky; top: 0; background: #f7f7f7; }
th.sortable { cursor: pointer; user-select: none; white-space: nowrap; }
th.sortable::after { content: " \\2195"; color: #aaa; }
th.sorted-asc::after { content: " \\2191"; color: #000; }
th.sorted-desc::after { content: " \\2193"; color: #000; }
tr.failed td { color: #a00; }
tr.selected td { background: #fff4d6; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #333; margin-right: 0.4em;
          vertical-align: -0.1em; }
.figure svg { max-width: 100%; height: auto; }
#figure-panel { border: 1px solid #ccc; padding: 0.5em 1em; margin: 1em 0; background: #fcfcfc; }
#figure-panel[hidden] { display: none; }
input[type=search] { font: inherit; padding: 4px 8px; width: 24em; margin: 0.4em 0; }
button { font: inherit; cursor: pointer; }
.count { color: #555; margin-left: 1em; }
.wide { overflow-x: auto; }
.wide td { white-space: nowrap; }
.wide td.k-phase, .wide td.k-warning { white-space: normal; min-width: 14em; max-width: 30em; font-size: 0.92em; }
.wide td.k-warning { min-width: 7em; }
/* The layer table fits a 1280 px window: the name is cut in the middle when it must be (its
   start, which holds the block number, and its last two parts stay; the whole name is in the
   title and in the text, for filtering and copying), and the columns most readers skip wait behind
   the "show all columns" box, which needs no script. */
table.layers { width: 100%; }
table.layers .extra { display: none; }
#all-columns:checked ~ .wide table.layers .extra { display: table-cell; }
.name { display: flex; min-width: 12em; max-width: 26em; }
.name > span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; }
.name > .head { flex: 0 1 auto; }
.name > .tail { flex: 0 0 auto; max-width: 100%; }  /* a shrink share, however small, costs its last letter */
#all-columns:checked ~ .wide table.layers { width: max-content; }  /* let it scroll rather than squeeze */
#all-columns { margin: 0.2em 0.4em 0.6em 0; }
ul.summary li { margin: 0.15em 0; }
"""

_SCRIPT = """
(function () {
  "use strict";
  function cellValue(row, index, numeric) {
    var cell = row.cells[index];
    var raw = cell.getAttribute("data-value");
    if (raw === null) { raw = cell.textContent.trim(); }
    if (!numeric) { return raw.toLowerCase(); }
    var number = parseFloat(raw);
    return isNaN(number) ? null : number;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, index) {
      if (!th.classList.contains("sortable")) { return; }
      th.addEventListener("click", function () {
        var numeric = th.getAttribute("data-type") === "num";
        var ascending = !th.classList.contains("sorted-asc");
        Array.prototype.forEach.call(headers, function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
        th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index, numeric), y = cellValue(b, index, numeric);
          if (x === y) { return 0; }
          if (x === null || x === "" || x === "-") { return 1; }   /* missing values last, both ways */
          if (y === null || y === "" || y === "-") { return -1; }
          return (x < y ? -1 : 1) * (ascending ? 1 : -1);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    var table = document.getElementById(input.getAttribute("data-filter"));
    var counter = document.getElementById(input.getAttribute("data-count"));
    function apply() {
      var words = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
      var shown = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var text = row.textContent.toLowerCase();
        var keep = words.every(function (w) { return text.indexOf(w) !== -1; });
        row.hidden = !keep;
        if (keep) { shown += 1; }
      });
      if (counter) { counter.textContent = shown + " of " + table.tBodies[0].rows.length + " shown"; }
    }
    input.addEventListener("input", apply);
    apply();
  });
  var panel = document.getElementById("figure-panel");
  document.querySelectorAll("button[data-figure]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      event.stopPropagation();
      var template = document.getElementById(button.getAttribute("data-figure"));
      var target = panel.querySelector(".figure");
      target.innerHTML = "";
      target.appendChild(template.content.cloneNode(true));
      panel.querySelector(".caption").textContent = button.getAttribute("data-name");
      panel.hidden = false;
      document.querySelectorAll("tr.selected").forEach(function (r) { r.classList.remove("selected"); });
      button.closest("tr").classList.add("selected");
      panel.scrollIntoView({block: "nearest"});
    });
  });
  var close = document.getElementById("figure-close");
  if (close) { close.addEventListener("click", function () { panel.hidden = true; }); }
})();
"""


def _page(title: str, body: Iterable[str]) -> str:
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n",
        *body,
        f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n",
    ])


_TAG = re.compile(r"<[^>]*>")  # matplotlib escapes "<" and ">" in attribute values and text alike
_ID = re.compile(r'(\sid=")')
_URL_REF = re.compile(r"""(url\(\s*['"]?)#""")
_HREF_REF = re.compile(r'(\s(?:xlink:)?href=")#')


def scoped_ids(svg: str, prefix: str) -> str:
    """An SVG with every id, and every reference to one, prefixed: matplotlib numbers its ids the
    same way in every figure (figure_1, clip paths, markers hashed from their shape, our gids), and
    inline SVGs share the page's id space, so without this a clip path or marker could resolve to
    another figure's, and the page would be invalid HTML."""
    def tag(match: re.Match[str]) -> str:
        text = _ID.sub(rf"\g<1>{prefix}", match.group(0))
        text = _URL_REF.sub(rf"\g<1>#{prefix}", text)
        return _HREF_REF.sub(rf"\g<1>#{prefix}", text)

    return _TAG.sub(tag, svg)


def _text(value: Any) -> str:
    """A cell as the terminal shows it: a missing or undefined number (None, NaN) is "-"."""
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return format_number(value)


def _sort_key(value: Any) -> str:
    """A cell's data-value: empty when missing, so that it sorts last either way."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _name_cell(name: str) -> str:
    """A layer name as a head, which is cut with an ellipsis when the column is short, and a tail
    (the last two dotted parts, e.g. "q_proj.weight"), which is cut only when it alone is too wide."""
    parts = name.split(".")
    head, tail = (".".join(parts[:-2]) + ".", ".".join(parts[-2:])) if len(parts) > 2 else ("", name)
    return (f"<span class=\"name\"><span class=\"head\">{escape(head)}</span>"
            f"<span class=\"tail\">{escape(tail)}</span></span>")


def _phase_table(counts: dict[str, int]) -> str:
    rows = "".join(
        f"<tr><td><span class=\"swatch\" style=\"background:{PHASE_STYLE.get(name, FAILED_STYLE)[0]}\"></span>{escape(name)}</td>"
        f"<td class=\"num\">{count}</td></tr>" for name, count in counts.items())
    return f"<table class=\"phases\"><thead><tr><th>phase</th><th class=\"num\">layers</th></tr></thead><tbody>{rows}</tbody></table>"


_NUMERIC_KEYS = {"alpha", "D", "tail_size", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank", "kappa",
                 "farms_alpha", "farms_kappa"}
# Shown by default: what a reader scans for. The rest is behind "show all columns".
_MAIN_KEYS = {"name", "shape", "alpha", "kappa", "phase", "warning", "tail_vectors", "shuffled_ks", "tail_verdict",
              "farms_alpha", "farms_kappa"}  # evidence asked for: shown


def analysis_html(report: Report, overview_svg: str | None, esd_svgs: dict[int, str]) -> str:
    """The page of one checkpoint's report, with its figures (SVG markup; the layers' by index)."""
    source = report.source
    columns = report_columns(report)
    body = [
        f"<h1>htmp report: {escape(source.path)}</h1>\n",
        f"<p class=\"meta\">{escape(source.format)}, {source.size_bytes:,} bytes, fingerprint "
        f"{escape(source.fingerprint)}; htmp {escape(report.htmp_version)}</p>\n",
        "<h2>Summary</h2>\n<ul class=\"summary\">",
        *[f"\n<li>{escape(line)}</li>" for line in summary_lines(report)],
        "</ul>\n<h2>Phases</h2>\n", _phase_table(report.summary.phase_counts),
    ]
    if overview_svg:
        body += ["\n<h2>Alpha and kappa per layer</h2>\n<div class=\"figure\" id=\"overview\">",
                 scoped_ids(overview_svg, "overview-"), "</div>\n"]
    body += [
        "<h2>Layers</h2>\n<p>Click a column to sort, type to filter (every word must appear in the row), "
        "and <em>ESD</em> to see a layer's spectrum with its fits.</p>\n",
        "<input type=\"search\" id=\"layer-filter\" data-filter=\"layers\" data-count=\"layer-count\" "
        "placeholder=\"filter layers, e.g. attention heavy-tailed\"><span class=\"count\" id=\"layer-count\"></span>\n",
        # The box must be a sibling before the table's <div>: the CSS that shows the columns keys on it.
        f"<br><input type=\"checkbox\" id=\"all-columns\"><label for=\"all-columns\">show all {len(columns)} "
        f"columns: also {', '.join(escape(label) for label, key in columns if key not in _MAIN_KEYS)}</label>\n",
        "<section id=\"figure-panel\" hidden><p><strong class=\"caption\"></strong> "
        "<button id=\"figure-close\">close</button></p><div class=\"figure\"></div></section>\n",
        "<div class=\"wide\"><table id=\"layers\" class=\"sortable layers\"><thead><tr><th>ESD</th>",
    ]
    for label, key in columns:
        classes = " ".join(["sortable", *(["num"] if key in _NUMERIC_KEYS else []), *(["extra"] if key not in _MAIN_KEYS else [])])
        body.append(f"<th class=\"{classes}\" data-key=\"{escape(key)}\" "
                    f"data-type=\"{'num' if key in _NUMERIC_KEYS else 'text'}\">{escape(label)}</th>")
    body.append("</tr></thead><tbody>\n")
    for index, layer in enumerate(report.layers):
        row = flat_layer_row(layer)
        button = (f"<button data-figure=\"esd-{index}\" data-name=\"{escape(layer.name)}\">ESD</button>"
                  if index in esd_svgs else "")
        cells = []
        for _, key in columns:
            classes = " ".join([f"k-{key}", *(["num"] if key in _NUMERIC_KEYS else []), *(["extra"] if key not in _MAIN_KEYS else [])])
            value = _sort_key(row[key])
            if key == "name":
                cells.append(f"<td class=\"{escape(classes)}\" data-value=\"{escape(value)}\" title=\"{escape(row[key])}\">"
                             f"{_name_cell(row[key])}</td>")
            elif key == "phase" and row["phase_name"] in PHASE_STYLE:
                cells.append(f"<td class=\"{escape(classes)}\" data-value=\"{escape(value)}\"><span class=\"swatch\" "
                             f"style=\"background:{PHASE_STYLE[row['phase_name']][0]}\"></span>{escape(_text(row[key]))}</td>")
            else:
                text = cell_text(key, row) if key in COMPOSED_CELLS else _text(row[key])
                cells.append(f"<td class=\"{escape(classes)}\" data-value=\"{escape(value)}\">{escape(text)}</td>")
        failed = ' class="failed"' if layer.status != "success" else ""
        body.append(f"<tr data-index=\"{index}\"{failed}><td>{button}</td>{''.join(cells)}</tr>\n")
    body.append("</tbody></table></div>\n")
    body += [f"<template id=\"esd-{index}\">{scoped_ids(svg, f'esd-{index}-')}</template>\n"
             for index, svg in esd_svgs.items()]
    if report.skipped:
        body.append(f"<h2>Skipped tensors ({len(report.skipped)})</h2>\n<table><thead><tr><th>tensor</th><th>shape</th>"
                    "<th>dtype</th><th>reason</th></tr></thead><tbody>")
        for s in report.skipped:
            body.append(f"<tr><td>{escape(s.name)}</td><td>{skipped_shape(s)}</td><td>{escape(s.dtype)}</td>"
                        f"<td>{escape(s.reason)}</td></tr>")
        body.append("</tbody></table>\n")
    body.append(f"<p class=\"meta\">Written by htmp {escape(__version__)}. This file needs no network.</p>")
    return _page(f"htmp: {source.path}", body)


def scan_html(title: str, columns: list[tuple[str, str, bool]], rows: list[dict[str, Any]],
              failures: list[tuple[str, str]], correlations: list[dict[str, Any]], scatter_svg: str | None,
              notes: list[str]) -> str:
    """The report of a scan: a checkpoint table (label, key, numeric), failures, correlations and their scatter."""
    body = [f"<h1>{escape(title)}</h1>\n", *[f"<p class=\"meta\">{escape(note)}</p>\n" for note in notes],
            "<h2>Checkpoints</h2>\n",
            "<input type=\"search\" id=\"checkpoint-filter\" data-filter=\"checkpoints\" data-count=\"checkpoint-count\" "
            "placeholder=\"filter checkpoints\"><span class=\"count\" id=\"checkpoint-count\"></span>\n",
            "<div class=\"wide\"><table id=\"checkpoints\" class=\"sortable\"><thead><tr>"]
    for label, key, numeric in columns:
        body.append(f"<th class=\"sortable{' num' if numeric else ''}\" data-key=\"{escape(key)}\" "
                    f"data-type=\"{'num' if numeric else 'text'}\">{escape(label)}</th>")
    body.append("</tr></thead><tbody>\n")
    for row in rows:
        cells = []
        for _, key, numeric in columns:
            value = row.get(key)
            cells.append(f"<td class=\"{'num' if numeric else ''}\" data-value=\"{escape(_sort_key(value))}\">"
                         f"{escape(_text(value))}</td>")
        failed = ' class="failed"' if row.get("status") == "failed" else ""
        body.append(f"<tr{failed}>{''.join(cells)}</tr>\n")
    body.append("</tbody></table></div>\n")
    if failures:
        body.append(f"<h2>Failures ({len(failures)})</h2>\n<ul>")
        body += [f"<li><strong>{escape(name)}</strong>: {escape(error)}</li>" for name, error in failures]
        body.append("</ul>\n")
    if correlations:
        body.append("<h2>Rank correlations with the labels, strongest first</h2>\n<table id=\"correlations\" "
                    "class=\"sortable\"><thead><tr>")
        for label, numeric in (("label", False), ("metric", False), ("n", True), ("Spearman rho", True), ("p", True),
                               ("Kendall tau", True), ("p (Kendall)", True)):
            body.append(f"<th class=\"sortable{' num' if numeric else ''}\" data-type=\"{'num' if numeric else 'text'}\">"
                        f"{escape(label)}</th>")
        body.append("</tr></thead><tbody>")
        for c in correlations:
            values = (c["label"], c["metric"], c["n"], c["spearman_rho"], c["spearman_p"], c["kendall_tau"], c["kendall_p"])
            body.append("<tr>" + "".join(
                f"<td class=\"{'num' if not isinstance(v, str) else ''}\" data-value=\"{escape(_sort_key(v))}\">"
                f"{escape(_text(v))}</td>" for v in values) + "</tr>")
        body.append("</tbody></table>\n")
    if scatter_svg:
        body += ["<h2>The strongest correlation</h2>\n<div class=\"figure\" id=\"scatter\">",
                 scoped_ids(scatter_svg, "scatter-"), "</div>\n"]
    body.append(f"<p class=\"meta\">Written by htmp {escape(__version__)}. This file needs no network.</p>")
    return _page(title, body)


def trajectory_html(trajectory: Trajectory, spans: Iterable[RuleSpan], metrics_svg: str, phases_svg: str) -> str:
    """The report of a training run (htmp_cli.trajectory): the figures, the summary per step (sortable),
    the phase transitions, the layers that stayed random-like and when each rule held."""
    steps = trajectory.steps
    title = f"htmp run: {trajectory.source}"
    body = [f"<h1>{escape(title)}</h1>\n",
            f"<p class=\"meta\">{len(steps)} analysed steps, {steps[0].step} to {steps[-1].step}; "
            f"{len(trajectory.layer_names)} layers; from {'a training log' if trajectory.kind == 'log' else 'checkpoints'}"
            "</p>\n"]
    body += [f"<p class=\"meta\">note: {escape(note)}</p>\n" for note in trajectory.notes]
    body += [f"<p class=\"meta\">left out: {escape(path)}: {escape(reason)}</p>\n" for path, reason in trajectory.skipped]
    body += ["<h2>Metrics against step</h2>\n<div class=\"figure\" id=\"run-metrics\">",
             scoped_ids(metrics_svg, "metrics-"), "</div>\n",
             "<h2>Phase of each layer at each step</h2>\n<div class=\"figure\" id=\"run-phases\">",
             scoped_ids(phases_svg, "phases-"), "</div>\n"]
    names = ("alpha", "kappa", "stable_rank", "log_spectral_norm")
    columns = [("step", "step", True)] + [(f"mean {n}", f"mean_{n}", True) for n in names] + [("phases", "phases", False)]
    body.append("<h2>Summary per step</h2>\n<div class=\"wide\"><table id=\"steps\" class=\"sortable\"><thead><tr>")
    for label, key, numeric in columns:
        body.append(f"<th class=\"sortable{' num' if numeric else ''}\" data-key=\"{escape(key)}\" "
                    f"data-type=\"{'num' if numeric else 'text'}\">{escape(label)}</th>")
    body.append("</tr></thead><tbody>\n")
    for row in summary_table(trajectory, names):
        row = {**row, "phases": ", ".join(f"{p} {c}" for p, c in row["phases"].items())}
        body.append("<tr>" + "".join(f"<td class=\"{'num' if numeric else ''}\" data-value=\"{escape(_sort_key(row[key]))}\">"
                                     f"{escape(_text(row[key]))}</td>" for _, key, numeric in columns) + "</tr>\n")
    body.append("</tbody></table></div>\n")
    transitions = trajectory.transitions()
    body.append(f"<h2>Phase transitions ({len(transitions)})</h2>\n")
    if transitions:
        body.append("<table id=\"transitions\" class=\"sortable\"><thead><tr>"
                    + "".join(f"<th class=\"sortable\" data-type=\"{kind}\">{label}</th>" for label, kind in
                              (("layer", "text"), ("step", "num"), ("from", "text"), ("to", "text")))
                    + "</tr></thead><tbody>\n")
        body += [f"<tr><td>{escape(t.layer)}</td><td class=\"num\" data-value=\"{t.step}\">{t.since} &rarr; {t.step}</td>"
                 f"<td>{escape(t.before)}</td><td>{escape(t.after)}</td></tr>\n" for t in transitions]
        body.append("</tbody></table>\n")
    else:
        body.append("<p>No layer changed phase between analyses.</p>\n")
    stayed = trajectory.never_left("random-like")
    body.append(f"<h2>Never left random-like ({len(stayed)})</h2>\n<p>{escape(', '.join(stayed)) or 'none'}</p>\n")
    spans = list(spans)
    if spans:
        body.append("<h2>Rules over the run: where each was broken</h2>\n<table id=\"rules\"><thead><tr><th>rule</th>"
                    "<th>severity</th><th class=\"num\">first broken</th><th class=\"num\">last broken</th>"
                    "<th class=\"num\">steps broken</th><th>the first time</th></tr></thead><tbody>\n")
        body += [f"<tr><td>{escape(s.rule.name)}</td><td>{escape(s.rule.severity)}</td><td class=\"num\">"
                 f"{'never' if s.first_broken is None else s.first_broken}</td><td class=\"num\">"
                 f"{'never' if s.last_broken is None else s.last_broken}</td><td class=\"num\">{s.broken_at} of "
                 f"{len(steps)}</td><td>{escape('; '.join(v.text for v in s.first_violations[:3]))}"
                 "</td></tr>\n" for s in spans]
        body.append("</tbody></table>\n")
    body.append(f"<p class=\"meta\">Written by htmp {escape(__version__)}. This file needs no network.</p>")
    return _page(title, body)
