"""The Lab's Doctor tab in a REAL JupyterLab + headless Chromium: clicking the tab runs the checks and
fills one row per part. The README picture ``docs/doctor.png`` comes from this run (kept as the test's
artefact; rewritten when missing or with ``WSI_LAB_UPDATE_SCREENSHOT=1``)."""

from __future__ import annotations

import io
import os

from PIL import Image

from tests.jupyter_env import (
    REPO,
    browser_marks,
    browser_page,
    jupyter_server,
    open_notebook,
    run_all_cells,
    write_notebook,
)

pytestmark = browser_marks()

SETUP = """
from pathlib import Path
import wsi_lab
from wsi_lab.testing import make_slide
Path("slides").mkdir(exist_ok=True)
make_slide("slides/s0.svs", 512, 384, tile=128)
lab = wsi_lab.Lab("slides")
lab
"""


def test_the_doctor_tab_lists_every_part_with_its_fix(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "doctor.ipynb", [SETUP])
    with jupyter_server(root, app="lab") as srv, browser_page((1280, 1100)) as page:
        open_notebook(page, srv, "doctor.ipynb")
        run_all_cells(page)
        try:
            page.locator(".jp-OutputArea .lm-TabBar-tab", has_text="Doctor").first.click(timeout=60_000)
            page.wait_for_selector(".wsi-lab-doctor-panel table.wsi-lab-doctor tbody tr", timeout=120_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "doctor_fail.png"))
            raise
        panel = page.locator(".wsi-lab-doctor-panel").first
        rows = panel.locator("table.wsi-lab-doctor tbody tr")
        text = panel.inner_text()
        assert rows.count() >= 10 and "parts available" in text and "Traceback" not in text
        assert "Dask distributed" in text and "jupyter-server-proxy" in text
        missing = panel.locator(".wsi-lab-doctor-missing").count()
        assert missing == panel.locator("code.wsi-lab-doctor-fix").count() or missing == 0  # a fix for each missing part
        png = panel.screenshot()
        (tmp_path / "doctor.png").write_bytes(png)
        img = Image.open(io.BytesIO(png)).convert("RGB")
        img.thumbnail((1100, 1400))
        buf = io.BytesIO()
        img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(buf, format="PNG", optimize=True)
        shot = REPO / "docs" / "doctor.png"
        if os.environ.get("WSI_LAB_UPDATE_SCREENSHOT") or not shot.exists():
            shot.write_bytes(buf.getvalue())
