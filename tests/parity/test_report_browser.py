"""report.html in a real headless browser: the verdict badge and the per-layer plot render.

Chromium (Debian's `chromium` package; `.ci/run` installs it) takes a screenshot of the page; the test
finds the badge's colour at the top of the picture and the plot's line colours below it. Without a
browser the test is skipped, unless FLAX_BART_REQUIRE_BROWSER=1 (set by `.ci/run`) makes that a failure.
"""

import os
import shutil
import subprocess

import numpy as np
import pytest

from parity.outcome import COLORS
from parity.report import write_reports
from test_outcome import make

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1200,1400"]
C0 = (0x1F, 0x77, 0xB4)  # matplotlib's first line colour: the first tensor family of the plot


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("FLAX_BART_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FLAX_BART_REQUIRE_BROWSER=1 but none of {BROWSERS} is on PATH")
    pytest.skip(f"no headless browser ({', '.join(BROWSERS)}) installed")


def _rgb(hex_color):
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


def _count(pixels, rgb, tol=6):
    return int((np.abs(pixels[..., :3].astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


def _screenshot(browser, page, tmp_path):
    from PIL import Image

    png = tmp_path / "shot.png"
    res = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    assert png.is_file(), res.stderr[-2000:]
    dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    return np.asarray(Image.open(png).convert("RGB")), dom


@pytest.mark.parametrize("outcome", ["PASS", "REGRESSION"])
def test_verdict_and_plot_render_in_chromium(outcome, tmp_path):
    browser = _browser()
    paths = write_reports(make(outcome), tmp_path / "run")
    pixels, dom = _screenshot(browser, paths["html"], tmp_path)
    assert 'id="verdict"' in dom and ">" + {"PASS": "PASS", "REGRESSION": "REGRESSION (baseline)"}[outcome] + "<" in dom

    top = pixels[:160]
    badge = _count(top, _rgb(COLORS[outcome]))
    assert badge > 400, f"verdict badge ({COLORS[outcome]}) not rendered at the top: {badge} pixels"
    for other, color in COLORS.items():
        if other != outcome:
            assert _count(top, _rgb(color)) < 50, f"{other}'s colour at the top of a {outcome} report"
    # The plot is an <img> of a base64 PNG: when it renders, its line colour appears below the header.
    line = _count(pixels[160:], C0, tol=10)
    assert line > 150, f"per-layer plot not rendered: {line} pixels of its line colour"
