"""The Doctor panel shows ``wsi-lab doctor``'s checks with each missing part's fix command, and the
environment report covers Dask, Horovod, SageMaker (boto3), napari and Chromium."""

from __future__ import annotations

from wsi_lab.doctor import Check, check_environment
from wsi_lab.ui.doctor_panel import DoctorPanel, checks_html


def test_the_report_names_every_part_with_a_fix_for_the_missing_ones():
    checks = check_environment()
    names = {c.name for c in checks}
    assert {"Dask distributed", "Dask dashboard (bokeh)", "Horovod", "SageMaker (boto3)", "napari",
            "Chromium (browser tests)", "torch", "jupyter-server-proxy (Dask dashboard link)"} <= names
    for c in checks:
        assert c.ok or c.hint, c
    horovod = next(c for c in checks if c.name == "Horovod")
    assert horovod.ok or "install_horovod.sh" in horovod.hint


def test_the_panel_renders_the_checks():
    panel = DoctorPanel()
    assert panel.wait(120)
    assert panel.checks and "wsi-lab-doctor" in panel.table.value
    assert "parts available" in panel.summary.value and not panel.errors.value
    html = checks_html([Check("napari", False, None, "No module named 'napari'", "pip install 'wsi-lab[napari]'"),
                        Check("torch", True, "2.14.1", "CPU only", "")])
    assert "✘ missing" in html and "pip install &#x27;wsi-lab[napari]&#x27;" in html and "✔ ok" in html
    idle = DoctorPanel(run=False)
    assert idle.checks == [] and idle.wait(0)


def test_the_lab_runs_the_checks_when_the_doctor_tab_is_first_shown(tmp_path):
    import wsi_lab
    from wsi_lab.testing import make_slide

    make_slide(tmp_path / "s0.svs", 512, 384, tile=128)
    lab = wsi_lab.Lab(str(tmp_path))
    try:
        lab.show_tab("Doctor")  # the click that builds the panel is the one that runs it
        panel = lab.panels["Doctor"]
        assert panel.wait(120) and panel.checks and "wsi-lab-doctor" in panel.table.value
    finally:
        lab.close()
