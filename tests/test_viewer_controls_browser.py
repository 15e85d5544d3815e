"""The viewer as a new user finds it (issue 13), in a REAL JupyterLab + headless Chromium: zoom/home/
full-screen buttons and a navigator, a hint that the wheel zooms, legends that name a layer once, no 404s
while the viewer finds its slide on the server, and a tile grid drawn once (on the tile boundaries) when
zoomed in."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CMU
from tests.jupyter_env import browser_marks, canvas_rgb, kernel_exec, lab_notebook

pytestmark = [pytest.mark.skipif(not CMU.exists(), reason="shared slides missing"), *browser_marks()]

SETUP = """
import json
import numpy as np, pandas as pd
import wsi_lab
from wsi_lab.ui import SlideViewer
from wsi_lab.overlays import grid_layer, mask_layer
xs, ys = np.meshgrid(np.arange(0, 2220 - 256, 256), np.arange(0, 2967 - 256, 256))
table = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "level": 0, "read_size": 256})
mask = wsi_lab.detect_tissue("CMU-1-Small-Region.svs")
v = SlideViewer("CMU-1-Small-Region.svs", layers=[mask_layer(mask), grid_layer(table, color=(0, 0, 255))],
                height="600px")
v
"""


def _vp(page) -> list:
    return json.loads(kernel_exec(page, "print(json.dumps(v.viewport))").strip().splitlines()[-1])


def _settle(page, before: list | None = None) -> list:
    """Wait until the viewer's viewport stops changing (and differs from ``before``); return it."""
    last = None
    for _ in range(20):
        page.wait_for_timeout(700)
        vp = _vp(page)
        if vp == last and vp != before:
            return vp
        last = vp
    return last


def test_viewer_controls_legend_probe_and_grid(tmp_path):
    root = tmp_path / "root"
    nb_dir = root / "cases" / "week1"
    nb_dir.mkdir(parents=True)
    shutil.copy(CMU, nb_dir / CMU.name)  # two folders below the server root: the viewer must find it
    not_found: list[str] = []
    on = {"response": lambda r: not_found.append(r.url) if r.status == 404 and "wsi-lab" in r.url else None}
    with lab_notebook(root, "cases/week1/viewer.ipynb", [SETUP], (1280, 1100), on=on) as (srv, page):
        page.wait_for_function("() => { const e = document.querySelector('.wsi-viewer');"
                               " return e && e.dataset.ready === '1' && Number(e.dataset.tilesLoaded) >= 4; }",
                               timeout=90_000)
        page.wait_for_timeout(1000)
        el = page.locator(".wsi-viewer")
        # -- found over HTTP with one probe, no 404 per wrong guess ---------------------------------
        assert el.get_attribute("data-source") == "server"
        assert not_found == [], not_found
        assert not [e for e in page.console_errors if "404" in e or "wsi" in e.lower()], page.console_errors
        # -- controls: zoom in/out, home, full screen, navigator, wheel hint ----------------------------
        for action in ("zoom in", "zoom out", "home", "full screen"):
            assert el.locator(f".wsi-btn[data-action='{action}']").is_visible(), action
        assert el.locator(".navigator").count() == 1 and el.locator(".navigator").is_visible()
        hint = el.locator(".wsi-hint")
        assert hint.is_visible() and "scroll to zoom" in hint.inner_text()
        el.scroll_into_view_if_needed()
        home = _settle(page)
        el.locator(".wsi-btn[data-action='zoom in']").click()
        zoomed = _settle(page, home)
        assert zoomed[2] < home[2] * 0.8, (home, zoomed)
        el.locator(".wsi-btn[data-action='zoom out']").click()
        out = _settle(page, zoomed)
        assert out[2] > zoomed[2] * 1.2, (zoomed, out)
        el.locator(".wsi-btn[data-action='zoom in']").click()
        _settle(page, out)
        el.locator(".wsi-btn[data-action='home']").click()
        back = _settle(page)
        assert abs(back[3] - home[3]) < 5, (home, back)
        el.scroll_into_view_if_needed()
        el.locator(".wsi-osd").hover(position={"x": 300, "y": 200})
        page.mouse.wheel(0, -300)
        try:
            page.wait_for_function("() => document.querySelector('.wsi-hint').classList.contains('wsi-hint-done')")
        except Exception:
            page.screenshot(path="/tmp/viewer_controls_fail.png")
            raise
        # -- legends: each layer named once, the colour swatch in its head ---------------------------
        entries = el.locator(".wsi-legend-entry").all_inner_texts()
        assert [t.strip() for t in entries] == ["tissue", "tiles"], entries
        assert el.locator(".wsi-legend-head .wsi-swatch").count() == 2
        # -- the grid, zoomed in: outlines only on the 256-px tile boundaries ------------------------
        kernel_exec(page, 'v.set_layer("tissue", visible=False)')
        page.wait_for_function("() => document.querySelector('.wsi-viewer').dataset.visibleLayers === 'tiles'")
        assert not el.locator(".wsi-legend-entry[data-layer='tissue'] input[type=checkbox]").is_checked()
        for box0 in ([600, 600, 600, 600], [300, 300, 1200, 1200]):
            kernel_exec(page, f"v.go_to(*{box0})")
            el.scroll_into_view_if_needed()  # new cells scroll the viewer away; off-screen it does not animate
            vp = _settle(page, box0)  # the front end answers with the box it fitted (wider: the aspect ratio)
            assert vp[0] <= box0[0] + 2 and vp[0] + vp[2] >= box0[0] + box0[2] - 2, (box0, vp)
            kernel_exec(page, 'v.set_layer("tiles", visible=True)')
            page.wait_for_function("() => document.querySelector('.wsi-viewer').dataset.visibleLayers === 'tiles'")
            page.wait_for_timeout(2500)
            with_grid = canvas_rgb(page)
            kernel_exec(page, 'v.set_layer("tiles", visible=False)')
            page.wait_for_function("() => document.querySelector('.wsi-viewer').dataset.visibleLayers === ''")
            page.wait_for_timeout(2000)
            without = canvas_rgb(page)
            assert _vp(page) == vp  # nobody moved the view
            H, W = with_grid.shape[:2]
            diff = np.abs(with_grid - without).sum(axis=2) > 90
            Image.fromarray((diff * 255).astype(np.uint8)).save(f"/tmp/grid_diff_{box0[0]}.png")
            Image.fromarray(with_grid.astype(np.uint8)).save(f"/tmp/grid_with_{box0[0]}.png")
            Image.fromarray(without.astype(np.uint8)).save(f"/tmp/grid_without_{box0[0]}.png")
            assert diff.mean() > 0.001, (f"{box0}: the grid drew nothing", el.get_attribute("data-tiles-failed"),
                                         el.locator(".wsi-status").inner_text(), not_found[-5:], vp)
            x0, y0, w, h = vp
            px = w / W  # level-0 px per screen px
            gx = x0 + (np.arange(W) + 0.5) * px
            gy = y0 + (np.arange(H) + 0.5) * (h / H)
            tol = 3 * px + 1
            near_x = np.abs(gx - np.round(gx / 256) * 256) <= tol
            near_y = np.abs(gy - np.round(gy / 256) * 256) <= tol
            near = near_y[:, None] | near_x[None, :]
            stray = diff & ~near
            assert stray.sum() <= 0.002 * diff.sum() + 5, (box0, int(stray.sum()), int(diff.sum()))
    assert "Traceback" not in srv.log_text()
