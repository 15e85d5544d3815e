"""The channel picker and gamma control in a REAL JupyterLab + headless Chromium (issue 12): a 3-channel
fluorescence OME-TIFF opens with one row per channel (named from its metadata); switching DAPI off in the
picker and changing gamma from Python change the tiles the server renders (``?display=``), the drawn
canvas pixels follow, and the settings land in the notebook folder's ``display.json``; a second viewer of
the slide (over the comm) follows those changes live, and its own picker still works."""

from __future__ import annotations

import json

import numpy as np

from tests.jupyter_env import browser_marks, canvas_rgb, kernel_exec, lab_notebook
from tests.test_viewer_channels import make_fluorescence_ome

pytestmark = browser_marks()

SETUP = """
from wsi_lab.ui import SlideViewer
v = SlideViewer("fluo.ome.tif", height="420px")
v
"""
COMM = """
v2 = SlideViewer("fluo.ome.tif", tile_source="comm", height="420px")
v2
"""


def _state_token(page) -> str:
    """The first viewer's tile token as the kernel has it."""
    return kernel_exec(page, "print(v.display_state['token'], end='')")


def _wait_shown(page, gen: int, index: int = 0) -> np.ndarray:
    """Wait until display generation ``gen`` of viewer ``index`` is drawn (its tiles all loaded); return
    its canvas."""
    page.wait_for_function("([g, i]) => { const e = document.querySelectorAll('.wsi-viewer')[i];"
                           " return Number(e.dataset.displayGen || 0) >= g && e.dataset.slideLoaded === '1'; }",
                           arg=[gen, index], timeout=60_000)
    page.wait_for_timeout(800)  # the canvas is redrawn on the next animation frames
    return canvas_rgb(page, index=index)


def test_channel_picker_and_gamma_change_the_rendered_tiles(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    make_fluorescence_ome(root / "fluo.ome.tif")
    tile_urls: list[str] = []
    on = {"request": lambda r: tile_urls.append(r.url) if "/wsi-lab/api/tiles/" in r.url else None}
    with lab_notebook(root, "channels.ipynb", [SETUP, COMM], (1280, 1000), on=on) as (srv, page):
        page.wait_for_function("() => { const e = document.querySelectorAll('.wsi-viewer');"
                               " return e.length === 2 && [...e].every((v) => v.dataset.ready === '1'"
                               " && v.dataset.slideLoaded === '1'); }", timeout=90_000)
        page.wait_for_timeout(800)
        el = page.locator(".wsi-viewer").nth(0)
        assert el.get_attribute("data-source") == "server"
        names = el.locator(".wsi-display-channel .wsi-display-name").all_inner_texts()
        assert names == ["DAPI", "FITC", "TRITC"]
        assert all("display=" in u for u in tile_urls) and tile_urls
        before = canvas_rgb(page)
        assert before[..., 2].max() > 200  # the blue DAPI checkerboard is drawn
        # -- switch DAPI off in the picker --------------------------------------------------------
        el.locator(".wsi-display-channel[data-channel='0'] input[type=checkbox]").click()
        off = _wait_shown(page, 1)
        assert off[..., 2].max() < 60, off[..., 2].max()  # no blue left
        assert off[..., 1].max() > 150  # FITC (green) still shown
        state = json.loads(kernel_exec(page, "import json; print(json.dumps(v.display_state))"))
        assert state["settings"]["channels"] == [1, 2]
        page.wait_for_timeout(1000)  # the kernel's echo (same settings, same token) reloads nothing
        assert el.get_attribute("data-display-gen") == "1" and el.get_attribute("data-display-token") == state["token"]
        # -- gamma from Python: the front end follows, the tiles darken ----------------------------
        kernel_exec(page, "v.set_display(gamma=3.0)")
        dark = _wait_shown(page, 2)
        assert dark.mean() < off.mean() - 2, (dark.mean(), off.mean())
        assert el.locator(".wsi-display-gamma-value").inner_text() == "3.00"
        recorded = json.loads((root / "display.json").read_text())["slides"]["fluo"]["settings"]
        assert recorded["channels"] == [1, 2] and recorded["gamma"] == 3.0
        # -- over the widget comm (no server): it followed the first viewer live (same slide and folder,
        # same kernel: DAPI off, then gamma), then TRITC (red) off in its own picker ----------------
        el2 = page.locator(".wsi-viewer").nth(1)
        el2.scroll_into_view_if_needed()
        assert el2.get_attribute("data-source") == "comm"
        red = _wait_shown(page, 2, 1)
        assert el2.get_attribute("data-display-token") == _state_token(page)
        assert red[..., 0].max() > 150 and red[..., 2].max() < 60, (red[..., 0].max(), red[..., 2].max())
        el2.locator(".wsi-display-channel[data-channel='2'] input[type=checkbox]").click()
        no_red = _wait_shown(page, 3, 1)
        assert no_red[..., 0].max() < 60 and no_red[..., 1].max() > 150, (no_red[..., 0].max(), no_red[..., 1].max())
        assert not [e for e in page.console_errors if "wsi" in e.lower()], page.console_errors
