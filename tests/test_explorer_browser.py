"""The LatentExplorer in a REAL JupyterLab + Chromium: lasso points (a mouse drag) in our Canvas-2D scatter and see their
tiles highlighted on the slide (drawn in the page from one binary buffer of boxes) and in the gallery; accept
them with the page's button; then the other way: the tiles in view select their points, relabelled with the
page's dropdown and button; both decisions are read back from the DecisionStore's Parquet and GeoJSON.
Screenshots go to ``out/test-artifacts/``."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tests.conftest import CMU
from tests.jupyter_env import (
    browser_marks,
    browser_page,
    jupyter_server,
    open_notebook,
    run_all_cells,
    run_code,
    write_notebook,
)
from tests.test_review_browser import cmu_predictions, copy_slide, shot

pytestmark = [pytest.mark.skipif(not CMU.exists(), reason="shared slides missing"), *browser_marks()]

EXPLORER = """
from wsi_lab.ui.explorer import LatentExplorer
ex = LatentExplorer("preds.parquet", height=320, color_by="pred", decisions="review", reviewer="dr-explorer")
ex
"""
REPORT = """
import json
print("REPORT" + json.dumps({"sel": len(ex.selected), "boxes": len(ex.viewer.highlight) // 16,
                             "scatter": len(ex.scatter.selected),
                             "gallery": len(ex.gallery.images), "n": len(ex.table), "brush_ms": ex.brush_ms,
                             "same": ex.viewer.highlight == ex._on_slide.boxes_of(ex._on_slide.positions(ex.selected)).tobytes()}))
"""


def _report(page) -> dict:
    out = run_code(page, REPORT.strip())
    return json.loads(out[out.index("REPORT") + 6:].strip().splitlines()[0])


def test_lasso_points_light_up_their_tiles_and_the_view_selects_its_points(tmp_path):
    root = copy_slide(tmp_path)
    cmu_predictions(root)
    write_notebook(root / "explore.ipynb", [EXPLORER])
    with jupyter_server(root, app="lab") as srv, browser_page((1280, 1100)) as page:
        open_notebook(page, srv, "explore.ipynb")
        run_all_cells(page)
        page.wait_for_selector(".wsi-explorer-viewer .wsi-viewer[data-ready='1']", timeout=60_000)
        page.wait_for_selector(".wsi-lab-explorer .wsi-scatter[data-drawn]", timeout=60_000)  # its points drawn
        scatter = page.locator(".wsi-lab-explorer .wsi-scatter")
        assert scatter.get_attribute("data-points") == str(len(pd.read_parquet(root / "preds.parquet")))
        canvas = scatter.locator("canvas").first
        drawn = page.evaluate("""() => { const c = document.querySelector('.wsi-scatter canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
        assert drawn > 50, drawn  # pixels of points on the canvas
        box = canvas.bounding_box()
        assert box and box["width"] > 200, box
        # a lasso (drag) around most of the plot
        cx, cy, r = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, min(box["width"], box["height"]) * 0.42
        page.mouse.move(cx + r, cy)
        page.mouse.down()
        for k in range(1, 41):
            a = 2 * math.pi * k / 40
            page.mouse.move(cx + r * math.cos(a), cy + r * math.sin(a), steps=2)
        page.mouse.up()
        try:
            page.wait_for_function("() => Number(document.querySelector('.wsi-explorer-count').innerText) > 0",
                                   timeout=20_000)
        except Exception:
            shot(page, ".wsi-lab-explorer", "explorer_lasso_failed.png")
            raise
        page.wait_for_selector(".wsi-explorer-viewer .wsi-legend-entry[data-layer='selected tiles']", timeout=20_000)
        page.wait_for_function("() => Number(document.querySelector('.wsi-explorer-gallery .wsi-gallery').dataset.count) > 0",
                               timeout=20_000)
        report = _report(page)
        assert 0 < report["sel"] <= report["n"] and report["boxes"] == report["sel"], report  # one slide
        assert report["scatter"] == report["sel"] and scatter.get_attribute("data-selected") == str(report["sel"])
        assert report["gallery"] == min(12, report["sel"]), report
        viewer = page.locator(".wsi-explorer-viewer .wsi-viewer")
        page.wait_for_function("() => Number(document.querySelector('.wsi-explorer-viewer .wsi-viewer')"
                               ".dataset.highlightDrawn) > 0", timeout=20_000)  # the boxes are on the page's canvas
        assert viewer.get_attribute("data-highlight-count") == str(report["sel"])
        # drawn from the scatter's own boxes in the page, before anything went to the kernel; the kernel's
        # viewer then holds the very bytes its own rule gives for the selection (so it sent none back)
        assert float(viewer.get_attribute("data-highlight-set-at")) <= float(scatter.get_attribute("data-lasso-sent-at"))
        assert report["same"], report
        yellow = page.evaluate("""() => { const c = document.querySelector('.wsi-explorer-viewer canvas.wsi-highlight');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 255 && d[i + 1] === 230 && d[i + 2] === 0
                && d[i + 3] === 140) n++; return [n, c.width * c.height]; }""")
        assert 0 < yellow[0] < yellow[1], yellow  # the tiles' boxes filled on the slide, not the whole canvas
        page.wait_for_timeout(500)
        shot(page, ".wsi-lab-explorer", "explorer_lasso.png")
        # the wheel zooms and a shift-drag pans: redrawn in the page, the selection kept
        frames = int(scatter.get_attribute("data-drawn"))
        page.mouse.move(cx, cy)
        page.mouse.wheel(0, -400)
        page.wait_for_function(f"() => Number(document.querySelector('.wsi-scatter').dataset.drawn) > {frames}")
        page.keyboard.down("Shift")
        page.mouse.down()
        page.mouse.move(cx + 40, cy + 30, steps=4)
        page.mouse.up()
        page.keyboard.up("Shift")
        page.wait_for_function(f"() => Number(document.querySelector('.wsi-scatter').dataset.drawn) > {frames + 1}")
        assert scatter.get_attribute("data-selected") == str(report["sel"]) and _report(page)["sel"] == report["sel"]
        # accept the lassoed tiles with the page's button: one batch in the store's files
        page.locator(".wsi-explorer-accept").click()
        page.wait_for_function(f"() => document.querySelector('.wsi-explorer-decided')?.innerText === '{report['sel']}'",
                               timeout=20_000)
        decided = pd.read_parquet(root / "review" / "decisions.parquet")
        assert len(decided) == report["sel"] and set(decided["action"]) == {"accept"}, decided
        assert set(decided["reviewer"]) == {"dr-explorer"} and decided["batch"].nunique() == 1, decided
        # the other way: the whole slide is in view, so "Select tiles in view" selects every point
        page.locator(".wsi-explorer-view").click()
        page.wait_for_function(f"() => Number(document.querySelector('.wsi-explorer-count').innerText) === {report['n']}",
                               timeout=20_000)
        # the slide first, then the scatter (drawn highlighted in the page): both hold every point
        page.wait_for_function(f"() => document.querySelector('.wsi-scatter').dataset.selected === '{report['n']}'",
                               timeout=20_000)
        again = _report(page)
        assert again["sel"] == again["scatter"] == report["n"] and again["boxes"] == report["n"], again
        # relabel every tile as "tumour" with the page's dropdown and button
        page.locator(".wsi-explorer-label select").select_option("tumour")
        page.locator(".wsi-explorer-relabel").click()
        page.wait_for_function("() => Number(document.querySelector('.wsi-explorer-decided')?.innerText) === "
                               f"{report['n']}", timeout=20_000)
        decided = pd.read_parquet(root / "review" / "decisions.parquet")
        last = decided[decided["batch"] == decided["batch"].max()]
        assert len(last) == report["n"] and set(last["action"]) == {"relabel"} and set(last["label"]) == {"tumour"}, last
        qupath = json.loads((root / "review" / "CMU.geojson").read_text())
        tiles = [f for f in qupath["features"] if f["properties"]["objectType"] == "tile"]
        assert len(tiles) == report["n"] and {f["properties"]["classification"]["name"] for f in tiles} == {"tumour"}
        assert {f["properties"]["action"] for f in tiles} == {"relabel"}
    assert not [e for e in page.console_errors if "wsi" in e.lower()], page.console_errors
