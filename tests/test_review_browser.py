"""The ReviewPanel in a REAL JupyterLab + Chromium: click a tile in the gallery, relabel it with a key,
restart the kernel, and find the decision reloaded and in the exported GeoJSON. Screenshots go to
``out/test-artifacts/`` (kept for a person to look at)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import CMU
from tests.jupyter_env import (
    REPO,
    accept_dialogs,
    browser_marks,
    lab_notebook,
    run_code,
    run_report,
    wait_kernel_idle,
)

pytestmark = [pytest.mark.skipif(not CMU.exists(), reason="shared slides missing"), *browser_marks()]

ARTIFACTS = REPO / "out" / "test-artifacts"


def cmu_predictions(root: Path, seed: int = 0) -> Path:
    """A predictions-shaped table over CMU-1-Small-Region's 256² grid (prob_*/pred/z_*: the model is not under
    test here), with the slide's path in its metadata, written as ``root/preds.parquet``."""
    from wsi_lab.data.table import write_table

    xs, ys = np.meshgrid(np.arange(0, 2220 - 256, 256), np.arange(0, 2967 - 256, 256))
    t = pd.DataFrame({"slide_id": "CMU", "patient_id": "p", "x": xs.ravel(), "y": ys.ravel(), "level": 0,
                      "read_size": 256, "tile_size": 64, "mpp": 0.5, "tissue_fraction": 1.0})
    rng = np.random.default_rng(seed)
    p = rng.random(len(t)).astype(np.float32)
    t["prob_normal"], t["prob_tumour"] = 1 - p, p
    t["pred"] = np.where(p > 0.5, "tumour", "normal")
    for i in range(4):
        t[f"z_{i:02d}"] = (rng.normal(size=len(t)) + (t.x / 1000 if i == 0 else 0)).astype(np.float32)
    t.attrs["wsi_lab"] = {"slides": {"CMU": {"path": str(root / CMU.name)}},
                          "predict": {"classes": ["normal", "tumour"], "kind": "classifier"}}
    return write_table(t, root / "preds.parquet")


def copy_slide(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(CMU, root / CMU.name)  # a copy: symlinks leading outside the root are not served
    return root


def shot(page, selector: str, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(selector).last.screenshot(path=str(ARTIFACTS / name))


PANEL = """
from wsi_lab.ui.review import ReviewPanel
panel = ReviewPanel("preds.parquet", "review", reviewer="dr-browser", height="300px", n=6)
panel
"""
AFTER_RESTART = """
import json
from wsi_lab.review import DecisionStore
s = DecisionStore("review")
e = s.effective()
gj = json.load(open(s.geojson_path("CMU")))
print("REPORT" + json.dumps({"n": len(e), "label": e.label.tolist(), "who": e.reviewer.tolist(), "xy": [int(e.x[0]), int(e.y[0])],
      "geo": [[f["properties"]["classification"]["name"], f["properties"]["reviewer"], f["geometry"]["coordinates"][0][0]]
              for f in gj["features"]]}))
"""


def test_relabel_a_tile_restart_the_kernel_and_find_the_decision_reloaded(tmp_path):
    root = copy_slide(tmp_path)
    cmu_predictions(root)
    with lab_notebook(root, "review.ipynb", [PANEL], (1280, 1300)) as (srv, page):
        page.wait_for_selector(".wsi-review-layered .wsi-viewer[data-ready='1']", timeout=60_000)
        page.wait_for_selector(".wsi-review-plain .wsi-viewer[data-ready='1']", timeout=60_000)
        first = page.locator(".wsi-review-gallery-top .wsi-gallery-cell").first
        first.wait_for()
        first.click()  # the highest-scoring tile in hand (the gallery takes focus)
        page.wait_for_selector(".wsi-review-gallery-top .wsi-gallery-selected")
        page.wait_for_function("() => document.querySelector('.wsi-review-info').innerText.includes('tile')")
        held = page.locator(".wsi-review-info").inner_text()
        page.keyboard.press("1")  # relabel as the first class ("normal"); moves on to the next tile
        page.wait_for_function("() => document.querySelector('.wsi-review-count').innerText === '1'", timeout=20_000)
        page.wait_for_selector(".wsi-review-gallery-top .wsi-gallery-marked")  # the decided tile is framed
        page.wait_for_selector(".wsi-review-gallery-top .wsi-gallery-cell[data-index='1'].wsi-gallery-selected")  # moved on
        assert page.locator(".wsi-review-layered .wsi-selected").count() == 1  # the tile marked on both views
        assert page.locator(".wsi-review-plain .wsi-selected").count() == 1
        shot(page, ".wsi-lab-review", "review_panel.png")
        # restart the kernel: the decision is on disk, in Parquet and GeoJSON
        # (not awaited: the command's promise settles only once its dialog is answered)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-kernel'); }")
        page.wait_for_selector(".jp-Dialog .jp-mod-accept", timeout=20_000)
        accept_dialogs(page)
        wait_kernel_idle(page)
        report = run_report(page, AFTER_RESTART)
        assert report["n"] == 1 and report["label"] == ["normal"] and report["who"] == ["dr-browser"], report
        assert f"x={report['xy'][0]} y={report['xy'][1]}" in held, (held, report)
        assert report["geo"] == [["normal", "dr-browser", [float(report["xy"][0]), float(report["xy"][1])]]], report
        # a new panel after the restart shows it too
        run_code(page, PANEL.strip())
        page.wait_for_function("() => { const c = document.querySelectorAll('.wsi-review-count');"
                               " return c.length && c[c.length - 1].innerText === '1'; }", timeout=30_000)
    assert not [e for e in page.console_errors if "wsi" in e.lower()], page.console_errors
