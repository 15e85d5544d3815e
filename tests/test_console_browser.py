"""The Job console in a REAL JupyterLab + headless Chromium: press Launch on a tiny small_cnn job and watch
the loss chart grow epoch by epoch (plotted points counted in the page before and after), then the row
says done. The README picture ``docs/console.png`` comes from this run (rewritten when missing or with
``WSI_LAB_UPDATE_SCREENSHOT=1``)."""

from __future__ import annotations

import time

import pytest

from tests.jupyter_env import browser_marks, lab_notebook, save_readme_picture

pytest.importorskip("torch")
pytestmark = browser_marks()

SETUP = """
from pathlib import Path
from tests._traindata import make_cohort
from wsi_lab.ui.console import JobConsole
table = make_cohort(Path("data"), slides=2, tile_size=32, read_size=64, width=256, height=256)
console = JobConsole(table=str(table), jobs_root="jobs")
console.epochs.value, console.batch_size.value = 6, 8
console
"""

_POINTS = "() => document.querySelectorAll('.wsi-lab-loss-chart .scatterlayer .trace .points path').length"
#: every plotted-point count the page goes through, recorded on each DOM change (a fast job on an idle machine
#: can run all its epochs between two polls)
_WATCH = """() => {
  window.__wsiCounts = [];
  const count = () => document.querySelectorAll('.wsi-lab-loss-chart .scatterlayer .trace .points path').length;
  new MutationObserver(() => {
    const n = count(), a = window.__wsiCounts;
    if (!a.length || a[a.length - 1] !== n) a.push(n);
  }).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


def test_launch_from_the_panel_and_watch_the_loss_chart_grow(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with lab_notebook(root, "console.ipynb", [SETUP], (1280, 1300)) as (srv, page):
        page.wait_for_selector(".wsi-lab-console .wsi-lab-console-launch", timeout=60_000)
        page.evaluate(_WATCH)
        page.locator(".wsi-lab-console .wsi-lab-console-launch").click()
        seen: list[int] = []  # the plotted points, each time the count changes
        try:
            page.wait_for_selector(".wsi-lab-console .wsi-lab-job-row", timeout=60_000)
            page.locator(".wsi-lab-console .wsi-lab-job-row").first.scroll_into_view_if_needed()
            page.wait_for_selector(".wsi-lab-console .wsi-lab-job-row .wsi-lab-loss-chart .main-svg", timeout=120_000)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                n = page.evaluate(_POINTS)
                if not seen or n != seen[-1]:
                    seen.append(n)
                if n == 12 and page.locator(".wsi-lab-console .wsi-lab-job-done").count():
                    break
                page.wait_for_timeout(150)
        except Exception:
            page.screenshot(path=str(tmp_path / "console_fail.png"))
            raise
        # the chart grew while the job ran (not drawn once at the end): ... → 12 (6 epochs x train, val)
        counts = page.evaluate("() => window.__wsiCounts")
        assert seen[-1] == 12 and counts[-1] == 12, (seen, counts)
        assert any(0 < n < 12 for n in counts), counts
        row = page.locator(".wsi-lab-console .wsi-lab-job-row").first
        text = row.inner_text()
        assert "tiles/s" in text and "6/6 epochs" in text and "Traceback" not in text
        grid = row.locator(".wsi-lab-job-grid tbody tr")
        assert grid.count() == 6 and "done" in grid.last.inner_text()
        assert page.locator(".wsi-lab-console .wsi-lab-console-spec").inner_text().count('"epochs": 6') == 1
        # the screenshot: kept as the test's artefact and the README picture
        png = page.locator(".wsi-lab-console").screenshot()
        (tmp_path / "console.png").write_bytes(png)
        save_readme_picture(png, "console.png")
        assert not [e for e in page.console_errors if "plotly" in e.lower()], page.console_errors
