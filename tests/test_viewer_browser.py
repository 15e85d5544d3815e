"""SlideViewer in a REAL JupyterLab + Chromium: slide pixels drawn over HTTP and over the comm, overlays,
legend, scale bar, clicks reaching Python, viewport synced back to the kernel."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CMU
from tests.jupyter_env import browser_marks, lab_notebook, run_code, run_report

pytestmark = [pytest.mark.skipif(not CMU.exists(), reason="shared slides missing"), *browser_marks()]

SETUP = """
import pandas as pd, numpy as np
from wsi_lab.ui import SlideViewer
from wsi_lab.overlays import heatmap_layer
xs, ys = np.meshgrid(np.arange(0, 2220 - 256, 256), np.arange(0, 2967 - 256, 256))
table = pd.DataFrame({"slide_id": "CMU", "patient_id": "p", "x": xs.ravel(), "y": ys.ravel(), "level": 0,
                      "read_size": 256, "tile_size": 256, "mpp": 0.5, "tissue_fraction": 1.0})
table["score"] = (table.x + table.y) / (table.x + table.y).max()
clicks = []
"""
SERVER_VIEWER = """
v = SlideViewer("CMU-1-Small-Region.svs", layers=[heatmap_layer(table, "score", opacity=0.5)], table=table, height="420px")
v.on_tile_click(lambda x, y, row: clicks.append((x, y, None if row is None else int(row.name))))
v
"""
COMM_VIEWER = """
v2 = SlideViewer("CMU-1-Small-Region.svs", tile_source="comm", height="420px")
v2
"""
REPORT = """
import json
print("REPORT" + json.dumps({"a": v.active_source, "b": v2.active_source, "vp": v.viewport, "vp2": v2.viewport,
                             "clicks": clicks, "sel": v.selected_tile.get("row"), "status": [v.status, v2.status]}))
"""


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue()


def _canvas_stats(page, index: int) -> dict:
    return page.evaluate("""(i) => {
        const c = document.querySelectorAll('.wsi-viewer')[i].querySelector('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0, s = 0, s2 = 0, nonwhite = 0;
        for (let k = 0; k < d.length; k += 4 * 7) {
            const g = (d[k] + d[k + 1] + d[k + 2]) / 3; n++; s += g; s2 += g * g; if (g < 225) nonwhite++;
        }
        const m = s / n; return {w: c.width, h: c.height, mean: m, std: Math.sqrt(s2 / n - m * m), nonwhite: nonwhite / n};
    }""", index)


def _wait_tiles(page, source: str, minimum: int = 4) -> None:
    page.wait_for_function(
        """([src, n]) => { const e = document.querySelector(`.wsi-viewer[data-source="${src}"]`);
                           return e && e.dataset.ready === '1' && Number(e.dataset.tilesLoaded) >= n; }""",
        arg=[source, minimum], timeout=60_000)
    page.wait_for_timeout(800)  # let OpenSeadragon finish blending the last tiles


def test_viewer_draws_slide_pixels_over_http_and_comm(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(CMU, root / CMU.name)  # a copy: symlinks leading outside the root are (rightly) not served
    with lab_notebook(root, "viewer.ipynb", [SETUP, SERVER_VIEWER, COMM_VIEWER], (1280, 1400)) as (srv, page):
        _wait_tiles(page, "server")
        _wait_tiles(page, "comm")
        viewers = page.locator(".wsi-viewer")
        assert viewers.count() == 2
        for i in range(2):
            stats = _canvas_stats(page, i)
            assert stats["w"] > 300 and stats["h"] > 300, stats
            assert stats["std"] > 15 and stats["nonwhite"] > 0.05, stats  # real H&E, not blank or uniform
            shot = np.asarray(Image.open(io.BytesIO(viewers.nth(i).screenshot())).convert("RGB")).astype(float)
            assert shot.std() > 15 and (shot.mean(axis=2) < 225).mean() > 0.05
        server_el, comm_el = viewers.nth(0), viewers.nth(1)
        assert server_el.get_attribute("data-source") == "server"
        assert comm_el.get_attribute("data-source") == "comm"
        assert server_el.get_attribute("data-tiles-failed") == "0" and comm_el.get_attribute("data-tiles-failed") == "0"
        # HTTP viewer really fetched tiles from the extension; the comm one did not
        # legend and scale bar drawn from the layer's legend() and the slide's µm/px
        legend = server_el.locator(".wsi-legend-entry")
        assert legend.count() == 1 and "score" in legend.inner_text()
        assert server_el.locator(".wsi-legend-bar").count() == 1
        scale = server_el.locator(".wsi-scalebar")
        assert scale.is_visible() and ("µm" in scale.inner_text() or "mm" in scale.inner_text())
        # the overlay is composited: the HTTP view differs from the plain comm view
        assert abs(_canvas_stats(page, 0)["mean"] - _canvas_stats(page, 1)["mean"]) > 0.5
        # click the middle of the first viewer: Python gets (x, y) and the TileTable row
        box = server_el.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_timeout(1500)
        # report state from the kernel
        report = run_report(page, REPORT)
        assert report["a"] == "server" and report["b"] == "comm", report
        x2, y2, w2, h2 = report["vp2"]  # untouched viewer: the whole slide height in view, level-0 px
        assert abs(h2 - 2967) < 5 and w2 > 2220 and x2 < 0, report
        assert len(report["clicks"]) == 1, report
        cx, cy, row = report["clicks"][0]
        assert 0 <= cx < 2220 and 0 <= cy < 2967 and row is not None
        assert report["sel"]["x"] <= cx < report["sel"]["x"] + 256
        assert page.locator(".wsi-selected").count() == 1
        # the click showed the tile at full resolution: 1 screen px per level-0 px, centred on the tile
        x, y, w, h = report["vp"]
        sx, sy = report["sel"]["x"] + 128, report["sel"]["y"] + 128
        assert abs(w - box["width"]) < 8 and abs(x + w / 2 - sx) < 4 and abs(y + h / 2 - sy) < 4, report
        # Python sets the view: the front end fits that level-0 box and reports the new viewport back
        run_code(page, "v2.go_to(1000, 1200, 400, 400)")
        page.wait_for_timeout(1500)
        vp = json.loads(run_code(page, "print(json.dumps(v2.viewport))").strip())
        assert vp[0] <= 1000 + 2 and vp[0] + vp[2] >= 1400 - 2 and abs(vp[1] - 1200) < 3 and abs(vp[3] - 400) < 3, vp
        assert not [e for e in page.console_errors if "wsi" in e.lower() or "openseadragon" in e.lower()], page.console_errors
        # the server forgets the layer (64 newer layers evict it, as a restart would): the viewer POSTs it again
        assert server_el.get_attribute("data-layer-syncs") == "1"
        tiny = base64.b64encode(_png(np.zeros((2, 2, 4), np.uint8))).decode()
        for i in range(64):
            payload = {"snapshot": {"png_b64": tiny, "downsample": 1 + i, "name": f"filler{i}"}}
            assert srv.get("wsi-lab/api/layers", method="POST", body=json.dumps(payload).encode())[0] == 200
        run_code(page, "v.go_to(0, 0, 300, 300)")  # new overlay tiles are needed -> 404 -> re-POST
        page.wait_for_function("() => document.querySelector('.wsi-viewer[data-source=\"server\"]').dataset.layerSyncs === '2'",
                               timeout=30_000)
        page.wait_for_timeout(1500)
        assert server_el.locator(".wsi-status").inner_text() == ""  # recovered silently, no error shown
    log = srv.log_text()
    assert "wsi-lab/api/tiles/" in log or "Traceback" not in log
    assert "Traceback" not in log


def test_auto_falls_back_to_comm_without_the_extension(tmp_path):
    """Extension disabled (VS Code/hub-like): "auto" draws over the comm; "server" says why it cannot."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(CMU, root / CMU.name)
    cells = [
        "from wsi_lab import open_slide\nfrom wsi_lab.ui import SlideViewer\n"
        "class NoMpp:  # a slide whose metadata has no µm/px: no scale bar\n"
        "    mpp = None\n"
        "    def __init__(self, s): self._s = s\n"
        "    def __getattr__(self, name): return getattr(self._s, name)\n"
        "v = SlideViewer(NoMpp(open_slide('CMU-1-Small-Region.svs')), height='300px')\nv",
        "w = SlideViewer('CMU-1-Small-Region.svs', tile_source='server', height='200px')\nw",
    ]
    with lab_notebook(root, "fallback.ipynb", cells, extensions={"wsi_lab.server": False}) as (srv, page):
        assert srv.get("wsi-lab/api/slides")[0] == 404  # really not there
        _wait_tiles(page, "comm")
        stats = _canvas_stats(page, 0)
        assert stats["std"] > 15 and stats["nonwhite"] > 0.03, stats
        assert not page.locator('.wsi-viewer[data-source="comm"] .wsi-scalebar').is_visible()
        page.wait_for_selector('.wsi-viewer[data-source="none"] .wsi-status[data-level="error"]', timeout=30_000)
        msg = page.locator('.wsi-viewer[data-source="none"] .wsi-status').inner_text()
        assert "wsi_lab.server" in msg and "comm" in msg
        out = run_code(page, "print(v.active_source, '|', w.active_source, '|', w.status[:40])")
        assert out.startswith("comm | ") and "wsi_lab.server" in out, out
    assert "Traceback" not in srv.log_text()
