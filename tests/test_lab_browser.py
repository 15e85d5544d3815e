"""The Lab in a REAL JupyterLab + headless Chromium: the viewer draws slide pixels, the threshold slider
changes the mask and the tile count, and the tile-grid overlay lands on the planned tiles.
The README screenshot ``docs/screenshot.png`` comes from this run: set ``WSI_LAB_UPDATE_SCREENSHOT=1`` to
rewrite it."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CMU

OME = CMU.parent / "OS-1-detail.ome.tif"
from tests.jupyter_env import browser_marks, canvas_rgb, lab_notebook, report_json, save_readme_picture  # noqa: E402

pytestmark = [pytest.mark.skipif(not CMU.exists(), reason="shared slides missing"), *browser_marks()]

LAB = """
import json, wsi_lab
lab = wsi_lab.Lab("slides", select="slides/CMU-1-Small-Region.svs")
lab.show_tab("Tune")
lab
"""


def _run(page, code: str, marker: str) -> dict:
    """Append a cell with ``code`` (which prints ``marker`` + JSON), run it, return the JSON."""
    page.locator(".jp-Notebook .jp-Cell").last.click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.type(code.strip())
    page.keyboard.press("Shift+Enter")
    try:
        out = page.wait_for_selector(f"text=/{marker}\\{{/", timeout=30_000).inner_text()
    except Exception:
        page.screenshot(path="/tmp/lab_browser_fail.png")
        raise
    return report_json(out, marker)


def _tiles(page) -> int:
    return int(page.locator(".wsi-lab-tuner .wsi-lab-tiles-kept").get_attribute("data-tiles"))


def _png(locator) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(np.int16)


def _canvas(page) -> np.ndarray:
    """The Lab viewer's drawing canvas (slide + layers, without the controls drawn over it) as RGB."""
    return canvas_rgb(page, ".wsi-lab-lab .wsi-viewer")


def _green(img: np.ndarray) -> float:
    """Fraction of pixels tinted by the tuner's green mask overlay."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return float(((g - r > 25) & (g - b > 25)).mean())


def _set_slider(page, label: str, value: str) -> None:
    slider = page.locator(".wsi-lab-tuner .widget-slider", has=page.locator(f"label:text-is('{label}')"))
    readout = slider.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def test_lab_in_jupyterlab(tmp_path):
    root = tmp_path / "root"
    (root / "slides").mkdir(parents=True)
    shutil.copy(CMU, root / "slides" / CMU.name)
    shutil.copy(OME, root / "slides" / OME.name)
    (root / "slides" / "fake.svs").write_bytes(b"II*\x00 twenty bytes...")  # an unreadable file beside them
    with lab_notebook(root, "lab.ipynb", [LAB], (1280, 1100)) as (srv, page):
        page.wait_for_selector(".wsi-lab-lab .wsi-lab-tuner .wsi-lab-tiles-kept", timeout=60_000)
        header = page.locator(".wsi-lab-lab .wsi-lab-header")
        assert CMU.name in header.inner_text() and "1 selected for tiling" in header.inner_text()
        # -- the Tune preview has a legend whose boxes switch its layers ------------------------------
        legend = page.locator(".wsi-lab-tuner-legend")
        assert "tissue" in legend.inner_text() and "kept tiles" in legend.inner_text()
        image = page.locator(".wsi-lab-tuner .wsi-lab-tuner-image")
        page.wait_for_timeout(500)
        green_on = _green(_png(image))
        legend.locator("label", has_text="tissue").click()
        page.wait_for_timeout(1200)
        assert _green(_png(image)) < green_on - 0.01, "unticking 'tissue' did not hide the mask"
        legend.locator("label", has_text="tissue").click()
        assert "0 = off" in page.locator(".wsi-lab-tuner").inner_text()
        assert "0 = the slide's native resolution" in page.locator(".wsi-lab-tuner").inner_text()
        # -- Slides tab: the unreadable file is listed with its reason, the others are usable -----------
        page.locator(".wsi-lab-lab .lm-TabBar-tab", has_text="Slides").click()
        slides = page.locator(".wsi-lab-browser")
        slides.locator(".wsi-lab-unreadable").first.wait_for(timeout=30_000)
        assert "for object of type 'float'" not in slides.inner_text() and "fake.svs" in slides.inner_text()
        assert "1 unreadable" in slides.inner_text()
        assert slides.locator(".wsi-lab-thumb-unreadable input[type=checkbox]").is_disabled()
        page.wait_for_function("() => document.querySelectorAll('.wsi-lab-browser img.wsi-lab-thumb-ready').length >= 2",
                               timeout=60_000)
        # a click on another slide's name makes it current (Tune follows) without selecting it
        slides.locator(".wsi-lab-thumb-name", has_text=OME.name).click()
        page.wait_for_function(f"() => (document.querySelector('.wsi-lab-lab .wsi-lab-header')?.innerText ?? '')"
                               f".includes('{OME.name}')", timeout=30_000)
        assert "1 selected for tiling" in header.inner_text()
        # ticking its box selects it for tiling, the current slide stays
        slides.locator(".wsi-lab-thumb", has=page.locator(".wsi-lab-thumb-name", has_text=OME.name)) \
            .locator("input[type=checkbox]").check()
        page.wait_for_function("() => (document.querySelector('.wsi-lab-lab .wsi-lab-header')?.innerText ?? '')"
                               ".includes('2 selected for tiling')", timeout=30_000)
        assert OME.name in header.inner_text()
        page.locator(".wsi-lab-lab .lm-TabBar-tab", has_text="Tune").click()
        page.wait_for_function(f"() => (document.querySelector('.wsi-lab-tuner')?.innerText ?? '').includes('{OME.name}')",
                               timeout=60_000)
        # the Tune tab's slide picker goes back to the first slide
        picker = page.locator(".wsi-lab-lab .wsi-lab-slide-picker select").last
        picker.select_option(label=CMU.name)
        page.wait_for_function(f"() => (document.querySelector('.wsi-lab-tuner')?.innerText ?? '').includes('{CMU.name}')",
                               timeout=60_000)
        page.wait_for_selector(".wsi-lab-lab .wsi-lab-tuner .wsi-lab-tiles-kept", timeout=60_000)
        # -- the threshold slider changes the mask and the tile count --------------------------
        page.locator(".wsi-lab-tuner select").first.select_option("variance")
        page.wait_for_function("() => (document.querySelector('.wsi-lab-tuner .wsi-lab-tiles-kept')?.innerText ?? '')"
                               ".includes('tiles kept')")
        # the variance default (120) is in place: the count below is variance's, not the previous method's
        page.wait_for_function("() => [...document.querySelectorAll('.wsi-lab-tuner .widget-slider')].some(s =>"
                               " s.innerText.includes('Threshold') && (s.querySelector('.widget-readout')?.innerText ?? '')"
                               ".trim() === '120')", timeout=30_000)
        page.wait_for_function("() => (document.querySelector('.wsi-lab-tuner .wsi-lab-hint')?.innerText ?? '')"
                               ".includes('variance')", timeout=30_000)
        page.wait_for_timeout(1000)
        n_low, green_low = _tiles(page), _green(_png(image))
        _set_slider(page, "Threshold", "1500")
        page.wait_for_function(f"() => document.querySelector('.wsi-lab-tuner .wsi-lab-tiles-kept')"
                               f".dataset.tiles !== '{n_low}'", timeout=30_000)
        page.wait_for_timeout(500)
        n_high, green_high = _tiles(page), _green(_png(image))
        assert 0 < n_high < n_low, (n_low, n_high)
        assert green_high < green_low - 0.01, (green_low, green_high)
        # -- the viewer tab draws slide pixels with the mask and tile-grid layers ---------------
        page.locator(".wsi-lab-lab .lm-TabBar-tab", has_text="Viewer").click()
        page.wait_for_function("() => { const e = document.querySelector('.wsi-lab-lab .wsi-viewer');"
                               " return e && e.dataset.ready === '1' && Number(e.dataset.tilesLoaded) >= 2; }",
                               timeout=60_000)
        page.wait_for_timeout(1500)
        # a freshly shown Viewer tab shows the whole slide (a view's own earlier viewport is not a command)
        assert page.locator(".wsi-lab-lab .wsi-viewer").get_attribute("data-moved") is None
        shot = _canvas(page)
        assert shot.shape[0] > 200 and shot.shape[1] > 200
        assert shot.std() > 15 and (shot.mean(axis=2) < 225).mean() > 0.05  # H&E pixels, not a blank canvas
        legend = page.locator(".wsi-lab-lab .wsi-legend-entry").all_inner_texts()
        assert any("tissue" in t for t in legend) and any("tiles" in t for t in legend), legend
        # README screenshot: the Lab with the viewer tab
        # (kept light: a 256-colour palette past 280 kB; only rewritten on request, or when missing)
        save_readme_picture(page.locator(".wsi-lab-lab").screenshot(), "screenshot.png", (1100, 1100),
                            full_colour_under=280_000, max_bytes=300_000)
        # -- the grid overlay is drawn over the planned tiles (and nowhere else) ----------------
        state = _run(page, """
v = lab.panels["Viewer"].viewer
v.set_layer("tissue", visible=False)
t = lab.state.planned
print("STATE" + json.dumps({"vp": v.viewport, "tiles": t[["x", "y"]].values.tolist(), "n": len(t)}))
""", "STATE")
        assert state["n"] == n_high
        page.wait_for_timeout(1500)
        with_grid = _canvas(page)
        _run(page, 'v.set_layer("tiles", visible=False)\nprint("HID" + json.dumps({"vp": v.viewport}))', "HID")
        page.wait_for_timeout(1500)
        without = _canvas(page)
        vp = _run(page, 'print("VP" + json.dumps({"vp": v.viewport}))', "VP")["vp"]
        assert vp == state["vp"] or not vp, (vp, state["vp"])  # nobody moved the view
        x0, y0, w, h = state["vp"]
        H, W = with_grid.shape[:2]
        diff = np.abs(with_grid - without).sum(axis=2) > 60
        assert diff.mean() > 0.001, "the grid layer drew nothing"
        near = np.zeros_like(diff)
        hit = 0
        for tx, ty in state["tiles"]:
            c0, c1 = int((tx - x0) / w * W) - 4, int((tx + 256 - x0) / w * W) + 4
            r0, r1 = int((ty - y0) / h * H) - 4, int((ty + 256 - y0) / h * H) + 4
            near[max(r0, 0):max(r1, 0), max(c0, 0):max(c1, 0)] = True
            hit += bool(diff[max(r0, 0):max(r1, 0), max(c0, 0):max(c1, 0)].any())
        assert hit >= 0.8 * len(state["tiles"]), (hit, len(state["tiles"]))
        assert diff[near].sum() / diff.sum() > 0.9, "grid pixels outside the planned tiles"
        assert not [e for e in page.console_errors if "wsi" in e.lower()], page.console_errors
    assert "Traceback" not in srv.log_text()
