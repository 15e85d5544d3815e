"""The slide browser's channel picker in a REAL JupyterLab + headless Chromium (issue 12): clicking a
fluorescence slide's name shows the picker (one row per channel, named from its OME metadata; a
brightfield slide shows none), switching DAPI off in it redraws that slide's thumbnail without blue, and the
settings land in the notebook folder's ``display.json``."""

from __future__ import annotations

import json

import numpy as np

from tests.jupyter_env import browser_marks, data_url_rgb, lab_notebook
from tests.test_viewer_channels import make_fluorescence_ome
from wsi_lab.testing import make_slide

pytestmark = browser_marks()

SETUP = """
from wsi_lab.ui import SlideBrowser
b = SlideBrowser("slides", thumb_size=128)
b
"""


def _thumb(page, name: str) -> np.ndarray:
    """The pixels of the thumbnail shown on ``name``'s card (the picture itself, not a screenshot of it)."""
    url = page.evaluate("""(name) => {
        const card = [...document.querySelectorAll('.wsi-lab-thumb')]
            .find((c) => c.querySelector('.wsi-lab-thumb-name')?.innerText.trim() === name);
        const img = card.querySelector('img');
        const cv = document.createElement('canvas');
        cv.width = img.naturalWidth; cv.height = img.naturalHeight;
        cv.getContext('2d').drawImage(img, 0, 0);
        return cv.toDataURL('image/png'); }""", name)
    return data_url_rgb(url)


def test_browser_channel_picker_redraws_the_thumbnail(tmp_path):
    root = tmp_path / "root"
    (root / "slides").mkdir(parents=True)
    make_fluorescence_ome(root / "slides" / "fluo.ome.tif")
    make_slide(root / "slides" / "bright.svs", 768, 512, source="procedural", associated=False)
    with lab_notebook(root, "browser.ipynb", [SETUP], (1280, 1000)) as (srv, page):
        page.wait_for_function("() => document.querySelectorAll('.wsi-lab-browser img.wsi-lab-thumb-ready').length === 2",
                               timeout=60_000)
        browser = page.locator(".wsi-lab-browser")
        # brightfield: no picker
        browser.locator(".wsi-lab-thumb-name", has_text="bright.svs").click()
        page.wait_for_function("() => (document.querySelector('.wsi-lab-browser')?.innerText ?? '')"
                               ".includes('looking at bright.svs')", timeout=30_000)
        assert browser.locator(".wsi-lab-picker").count() == 0
        before = _thumb(page, "fluo.ome.tif")
        assert before[..., 2].max() > 200  # the blue DAPI checkerboard
        # fluorescence: the picker, named from the file's metadata
        browser.locator(".wsi-lab-thumb-name", has_text="fluo.ome.tif").click()
        page.wait_for_selector(".wsi-lab-browser .wsi-lab-picker .wsi-display-channel", timeout=30_000)
        names = browser.locator(".wsi-lab-picker .wsi-display-name").all_inner_texts()
        assert names == ["DAPI", "FITC", "TRITC"]
        token = browser.locator(".wsi-lab-picker .wsi-display").get_attribute("data-token")
        # switch DAPI off: the kernel echoes a new token, the thumbnail is redrawn without blue
        browser.locator(".wsi-lab-picker .wsi-display-channel[data-channel='0'] input[type=checkbox]").click()
        page.wait_for_function("(t) => { const e = document.querySelector('.wsi-lab-picker .wsi-display');"
                               " return e && e.dataset.token && e.dataset.token !== t; }", arg=token, timeout=30_000)
        page.wait_for_timeout(500)  # the new picture is decoded
        after = _thumb(page, "fluo.ome.tif")
        assert after[..., 2].max() < 60, after[..., 2].max()
        assert after[..., 1].max() > 150  # FITC (green) still shown
        assert after.shape == before.shape == (102, 128, 3), after.shape
        assert not browser.locator(".wsi-lab-picker .wsi-display-channel[data-channel='0'] input[type=checkbox]").is_checked()
        recorded = json.loads((root / "display.json").read_text())["slides"]["fluo"]["settings"]
        assert recorded["channels"] == [1, 2]
        assert browser.locator(".wsi-lab-picker .wsi-display-error").count() == 0
        assert not [e for e in page.console_errors if "wsi" in e.lower()], page.console_errors
    assert "Traceback" not in srv.log_text()
