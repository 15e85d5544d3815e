"""The Lab's Doctor tab in a REAL JupyterLab + headless Chromium: clicking the tab runs the checks and
fills one row per part. The README picture ``docs/doctor.png`` comes from this run (kept as the test's
artefact; rewritten when missing or with ``WSI_LAB_UPDATE_SCREENSHOT=1``)."""

from __future__ import annotations

from tests.jupyter_env import browser_marks, lab_notebook, save_readme_picture

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
    with lab_notebook(root, "doctor.ipynb", [SETUP], (1280, 1100)) as (srv, page):
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
        save_readme_picture(png, "doctor.png")
