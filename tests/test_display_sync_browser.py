"""A display change made in the slide browser's channel picker reaches an already-open viewer of the same
slide live, in a REAL JupyterLab + headless Chromium: switching DAPI off in the browser's picker makes the
viewer above it load tiles with the new ``?display=`` token (its display generation counts up, its own
picker unticks DAPI) and its drawn canvas loses the blue, with no rebuild of the viewer."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from tests.jupyter_env import browser_marks, browser_page, jupyter_server, open_notebook, run_all_cells, write_notebook
from tests.test_viewer_channels import make_fluorescence_ome

pytestmark = browser_marks()

VIEWER = """
from wsi_lab.ui import SlideBrowser, SlideViewer
v = SlideViewer("slides/fluo.ome.tif", height="360px")
v
"""
BROWSER = """
b = SlideBrowser("slides", thumb_size=96)
b
"""


def _canvas(page) -> np.ndarray:
    url = page.evaluate("() => document.querySelector('.wsi-viewer canvas').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(np.int16)


def test_the_browsers_picker_redraws_an_open_viewer(tmp_path):
    root = tmp_path / "root"
    (root / "slides").mkdir(parents=True)
    make_fluorescence_ome(root / "slides" / "fluo.ome.tif")
    write_notebook(root / "sync.ipynb", [VIEWER, BROWSER])
    with jupyter_server(root, app="lab") as srv, browser_page((1280, 1100)) as page:
        open_notebook(page, srv, "sync.ipynb")
        run_all_cells(page)
        page.wait_for_function("() => { const v = document.querySelector('.wsi-viewer');"
                               " return v && v.dataset.ready === '1' && v.dataset.slideLoaded === '1'"
                               " && document.querySelectorAll('.wsi-lab-browser img.wsi-lab-thumb-ready').length === 1; }",
                               timeout=90_000)
        page.wait_for_timeout(800)  # drawn
        viewer = page.locator(".wsi-viewer").first
        assert _canvas(page)[..., 2].max() > 200  # the blue DAPI checkerboard
        token = viewer.get_attribute("data-display-token")
        gen = int(viewer.get_attribute("data-display-gen") or 0)
        browser = page.locator(".wsi-lab-browser")
        browser.locator(".wsi-lab-thumb-name", has_text="fluo.ome.tif").click()
        page.wait_for_selector(".wsi-lab-browser .wsi-lab-picker .wsi-display-channel", timeout=30_000)
        # DAPI off in the browser's picker, not in the viewer
        browser.locator(".wsi-lab-picker .wsi-display-channel[data-channel='0'] input[type=checkbox]").click()
        viewer.scroll_into_view_if_needed()
        page.wait_for_function("([g, t]) => { const v = document.querySelector('.wsi-viewer');"
                               " return Number(v.dataset.displayGen || 0) > g && v.dataset.displayToken !== t"
                               " && v.dataset.slideLoaded === '1'; }", arg=[gen, token], timeout=30_000)
        page.wait_for_timeout(800)  # the canvas is redrawn on the next animation frames
        after = _canvas(page)
        assert after[..., 2].max() < 60, after[..., 2].max()  # the viewer's tiles lost the blue
        assert after[..., 1].max() > 150  # FITC (green) still shown
        picker_token = browser.locator(".wsi-lab-picker .wsi-display").get_attribute("data-token")
        assert viewer.get_attribute("data-display-token") == picker_token
        assert not viewer.locator(".wsi-display-channel[data-channel='0'] input[type=checkbox]").is_checked()
        recorded = json.loads((root / "display.json").read_text())["slides"]["fluo"]["settings"]
        assert recorded["channels"] == [1, 2]
        assert not [e for e in page.console_errors if "wsi" in e.lower()], page.console_errors
    assert "Traceback" not in srv.log_text()
