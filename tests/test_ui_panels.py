"""ThresholdTuner, TilingPanel and the Lab (panel registry, shared state), on the real slides."""

from __future__ import annotations

import json
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pytest

import wsi_lab
from wsi_lab.tiling import TilingParams
from wsi_lab.ui.lab import Lab, register_panel, registered_panels, unregister_panel
from wsi_lab.ui.tiling_panel import TilingPanel
from wsi_lab.ui.tuner import ThresholdTuner, tuned_thumbnail


@pytest.fixture(scope="module")
def tuner(cmu_path):
    return ThresholdTuner(cmu_path)


def test_tuner_mask_and_count_follow_the_controls(tuner, cmu_path):
    assert tuner.errors.text == "" and tuner.mask is not None
    assert tuner.n_tiles == len(tuner.planned) > 0
    # the picture is the thumbnail with a green mask overlay where the mask says tissue
    pic = tuned_thumbnail(tuner)
    assert pic.shape[:2] == tuner._thumb.shape[:2]
    assert not np.array_equal(pic, tuner._thumb)
    tuner.method.value = "variance"
    counts = {}
    for t in (20, 600, 1500):
        tuner.threshold.value = t
        counts[t] = (tuner.n_tiles, tuner.mask.fraction)
    assert counts[20][0] > counts[1500][0] and counts[20][1] > counts[600][1] > counts[1500][1]
    # the count matches what the core plans with the same parameters
    p = tuner.params
    assert p.method == "variance" and p.method_params["threshold"] == 1500
    mask = wsi_lab.detect_tissue(cmu_path, "variance", threshold=1500)
    assert len(wsi_lab.plan_tiles(cmu_path, 256, mask=mask, min_tissue=0.5)) == tuner.n_tiles
    # bigger tiles -> fewer tiles; min_tissue 0 keeps every tile that touches tissue
    tuner.threshold.value = 120
    n256 = tuner.n_tiles
    tuner.tile_size.value = 512
    assert 0 < tuner.n_tiles < n256
    tuner.tile_size.value = 256
    tuner.min_tissue.value = 0.0
    assert tuner.n_tiles > n256
    tuner.min_tissue.value = 0.5
    assert "tiles kept" in tuner.count.value and f"data-tiles='{n256}'" in tuner.count.value


def test_tuner_auto_threshold_and_morphology(tuner):
    tuner.method.value = "otsu"
    assert tuner.auto.value is True
    # only the background-only control is hidden (each control has its own layout)
    assert tuner.max_background.layout.display == "none"
    assert all(w.layout.display != "none" for w in (tuner.method, tuner.threshold, tuner.closing, tuner.tile_size))
    auto_t = tuner.threshold.value
    assert tuner.mask.params["auto_threshold"] and tuner.mask.params["threshold"] == pytest.approx(auto_t)
    tuner.threshold.value = auto_t + 60  # moving the slider switches to a manual threshold
    assert tuner.auto.value is False and tuner.params.method_params["threshold"] == auto_t + 60
    tuner.closing.value = 3
    assert tuner.mask.params["closing"] == 3
    tuner.min_object.value = 5000.0
    assert tuner.params.method_params["min_object_um2"] == 5000.0
    tuner.apply_settings({"closing": 0, "min_object": 0.0, "method": "background"})
    assert tuner.method.value == "background" and tuner.mask.method == "background"
    assert tuner.max_background.layout.display is None


def test_tuner_bad_values_show_messages_not_crashes(tuner):
    before = tuner.n_tiles
    tuner.tile_size.value = 0
    assert "tile_size must be an integer" in tuner.errors.text and tuner.n_tiles == 0
    tuner.tile_size.value = 10**6
    assert "tile_size" in tuner.errors.text
    tuner.tile_size.value = 256
    assert tuner.errors.text == "" and tuner.n_tiles == before
    tuner.mpp.value = -1.0
    # says "µm/px" (not "mpp"), what 0 means, and the value with sensible decimals
    assert "Tile µm/px must be > 0 (0 = the slide's native resolution), got -1" == tuner.errors.text
    tuner.mpp.value = 0.1234567
    assert "0.1235 µm/px" in tuner.errors.text and "Use a tile µm/px of at least 0.2495" in tuner.errors.text, \
        tuner.errors.text
    assert "0.1234567" not in tuner.errors.text
    tuner.mpp.value = 0.0
    tuner.method.value = "otsu"
    tuner.threshold.value = 255  # saturation > 255 is impossible: a typed NoTissueError, shown readably
    assert "no tissue found" in tuner.errors.text and tuner.mask is None and tuner.n_tiles == 0
    assert "Traceback" not in tuner.errors.value


def test_tuner_saves_per_slide_overrides(tmp_path, cmu_path, ndpi_path):
    t1 = ThresholdTuner(cmu_path)
    t1.method.value = "variance"
    t1.threshold.value = 300
    out = t1.save_overrides(tmp_path / "ov.json")
    t2 = ThresholdTuner(ndpi_path, tile_size=128)
    t2.save_overrides(out)
    data = json.loads(out.read_text())
    assert set(data) == {"CMU-1-Small-Region", "test3-DAPI-2-387"}
    assert TilingParams.from_dict(data["CMU-1-Small-Region"]).method_params == {"threshold": 300.0}
    assert TilingParams.from_dict(data["test3-DAPI-2-387"]).tile_size == 128
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(wsi_lab.errors.InvalidParameterError):
        t1.save_overrides(tmp_path / "bad.json")


def test_tuner_fluorescence_slide(ndpi_path):
    t = ThresholdTuner(ndpi_path)
    assert t.mask.params["modality"] == "fluorescence" and t.n_tiles > 0


@pytest.mark.slow
def test_tiling_panel_runs_on_a_real_local_cluster(tmp_path, cmu_path, ndpi_path):
    ov = {"test3-DAPI-2-387": TilingParams(tile_size=512, method="variance")}
    panel = TilingPanel([cmu_path, ndpi_path, tmp_path / "missing.svs"], TilingParams(tile_size=256), out=tmp_path / "t",
                        overrides=ov, n_workers=1)
    assert panel.start() is True
    assert panel.start() is False and "already going" in panel.errors.text  # one run at a time
    result = panel.wait(180)
    assert result is not None and not panel.running
    assert result.n_tiles["CMU-1-Small-Region"] == len(wsi_lab.plan_tiles(cmu_path, 256, mask="od"))  # the default method
    assert set(panel.table.loc[panel.table.slide_id == "test3-DAPI-2-387", "tile_size"]) == {512}  # override used
    assert panel.progress.value == 1.0 and panel.events[-1].finished
    assert "127.0.0.1" in panel.dashboard.value
    status = panel.slide_table.value
    assert "done: " in status and "failed" in status and "missing" in status
    assert "failed" in panel.errors.text  # the missing slide is reported, the others finished
    assert "TileTable" in panel.preview.value and "tissue_fraction" in panel.preview.value
    assert not panel.start_button.disabled and panel.cancel_button.disabled


def test_tiling_panel_input_errors(tmp_path, cmu_path):
    panel = TilingPanel([], out=tmp_path)
    assert panel.start() is False and "no slides to tile" in panel.errors.text
    panel = TilingPanel([cmu_path], params=lambda: {"tile_size": -3}, out=tmp_path)
    assert panel.start() is False and "tile_size" in panel.errors.text
    panel = TilingPanel([cmu_path], out=tmp_path)
    panel.cluster.value = "address"
    assert panel.n_workers.layout.display == "none" and panel.address.layout.display is None
    panel.address.value = "   "
    assert panel.start() is False and "scheduler address" in panel.errors.text


def test_lab_tabs_shared_selection_and_registry(cmu_path, ndpi_path, shared_slides):
    calls = []

    def review(lab):
        calls.append(lab)
        return widgets.HTML("review panel")

    def broken(lab):
        raise wsi_lab.errors.DataError("labels.csv: column 'label' missing")

    register_panel("Review", review, order=60)
    register_panel("Broken", broken, order=70)
    try:
        assert [s.name for s in registered_panels()][:4] == ["Slides", "Viewer", "Tune", "Tiling"]
        lab = wsi_lab.Lab(shared_slides)
        assert tuple(t for t in lab.tabs.titles if t not in ("Jobs", "Doctor")) == \
            ("Slides", "Viewer", "Tune", "Tiling", "Review", "Broken")
        assert calls == [lab]
        assert "column 'label' missing" in lab.panels["Broken"].children[0].text  # message, no crash
    finally:
        unregister_panel("Review")
        unregister_panel("Broken")
    st = lab.state
    browser, viewer, tune = lab.panels["Slides"], lab.panels["Viewer"], lab.panels["Tune"]
    assert st.current == st.selected[0] == str(browser.table["path"].iloc[0])
    assert viewer.viewer is not None and [e["name"] for e in viewer.viewer.layers] == ["tissue", "tiles"]
    assert st.mask is tune.tuner.mask and len(st.planned) == tune.tuner.n_tiles
    # selecting slides for tiling does not move the view; a click on a card (show) does
    browser.select([str(cmu_path), str(ndpi_path)])
    assert st.current == str(cmu_path) and st.selected == [str(cmu_path), str(ndpi_path)]
    assert "<span class='wsi-lab-selected-count'>2</span>" in lab.header.value
    browser._open_buttons[str(ndpi_path)].click()
    assert st.current == str(ndpi_path) and Path(tune.tuner.slide.path) == ndpi_path
    assert Path(viewer.viewer.slide.path) == ndpi_path and st.selected == [str(cmu_path), str(ndpi_path)]
    assert ndpi_path.name in lab.header.value and browser._open_buttons[str(ndpi_path)].button_style == "primary"
    # the Tune and Viewer tabs have a slide picker that follows (and sets) the current slide
    assert viewer.picker.value == tune.picker.value == str(ndpi_path)
    viewer.picker.value = str(cmu_path)
    assert st.current == str(cmu_path) and Path(tune.tuner.slide.path) == cmu_path and tune.picker.value == str(cmu_path)
    tune.picker.value = str(ndpi_path)
    assert st.current == str(ndpi_path) and Path(viewer.viewer.slide.path) == ndpi_path
    # tuner changes reach the viewer layers and the tiling parameters
    tune.tuner.method.value = "variance"
    assert st.params.method == "variance"
    tune.override.click()
    assert "test3-DAPI-2-387" in st.overrides
    # a finished tiling (simulated with the planned table) turns the grid into a heatmap
    st.tiles = st.planned.copy()
    assert [e["name"] for e in viewer.viewer.layers][-1] != "tiles"
    browser.select([])
    assert st.current == str(ndpi_path) and st.selected == []  # clearing the selection keeps the view
    browser.show(None)
    assert st.current is None and "Choose a slide" in viewer.title.value


def test_lab_missing_folder_is_a_message(tmp_path):
    lab = Lab(tmp_path / "nowhere")
    assert "not a directory" in lab.panels["Slides"].errors.text
    assert lab.state.current is None


def test_lab_releases_slides_and_cancels_runs_when_closed(tmp_path, cmu_path, ndpi_path, shared_slides):
    """Regression: switching slides left the previous viewer (and its open slide) behind; closing the
    Lab or a Tiling panel left tuner slides open and a running Dask cluster going."""
    lab = wsi_lab.Lab(shared_slides, select=str(cmu_path))
    viewer_panel, tune = lab.panels["Viewer"], lab.panels["Tune"]
    first_viewer, first_tuner = viewer_panel.viewer, tune.tuner
    lab.panels["Slides"].show(str(ndpi_path))
    assert viewer_panel.viewer is not first_viewer and first_viewer.comm is None  # closed
    assert first_tuner.comm is None
    current_viewer, current_tuner = viewer_panel.viewer, tune.tuner
    lab.close()
    assert current_viewer.comm is None and current_tuner.comm is None
    assert viewer_panel.viewer is None and tune.tuner is None
    lab.state.current = str(cmu_path)  # closed panels no longer follow the state
    assert viewer_panel.viewer is None and tune.tuner is None

    panel = TilingPanel([cmu_path], TilingParams(tile_size=256), out=tmp_path / "t", n_workers=1)
    assert panel.start() is True
    panel.close()
    result = panel.wait(120)
    assert not panel.running and result is not None and result.cancelled


def test_lab_with_an_unreadable_slide_keeps_the_readable_ones(tmp_path, cmu_path):
    """Regression (issue 13.1/13.2): a 20-byte fake.svs beside a real slide replaced the Slides tab with
    "Unknown format code 'd' for object of type 'float'"; a folder with only the fake one printed
    "Exception ignored in Widget.__del__ ... no attribute 'slide'" for the viewer and the tuner."""
    import gc
    import shutil
    import sys
    shutil.copy(cmu_path, tmp_path / cmu_path.name)
    (tmp_path / "fake.svs").write_bytes(b"II*\x00not a slide..")
    lab = Lab(tmp_path)
    browser = lab.panels["Slides"]
    assert browser.errors.text == "" and "Unknown format" not in browser.table_html.value
    row = browser.table.set_index("name").loc["fake.svs"]
    assert row["error"] and "unreadable" in row["flags"]
    assert "CMU-1-Small-Region.svs" in browser.table_html.value and "1 unreadable" in browser.summary.value
    assert lab.state.current == str(tmp_path / cmu_path.name) and lab.state.slides == [str(tmp_path / cmu_path.name)]
    assert lab.panels["Tune"].tuner is not None and lab.panels["Viewer"].viewer is not None
    assert browser._toggles[str(tmp_path / "fake.svs")].disabled  # cannot be selected for tiling
    browser.select([str(tmp_path / "fake.svs")])
    assert browser.selected == [] and "Cannot be read: fake.svs" in browser.errors.text
    assert (tmp_path / "fake.svs").name not in [o[0] for o in lab.panels["Tune"].picker.options]
    lab.close()

    only = tmp_path / "only"
    only.mkdir()
    (only / "fake.svs").write_bytes(b"II*\x00not a slide..")
    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        lab = Lab(only)
        assert "could be read" in lab.panels["Slides"].errors.text and lab.state.current is None
        lab.close()
        del lab
        for cls in (ThresholdTuner, __import__("wsi_lab.ui.viewer", fromlist=["SlideViewer"]).SlideViewer):
            with pytest.raises(wsi_lab.errors.WSILabError):
                cls(only / "fake.svs")
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert unraisable == [], [str(u.exc_value) for u in unraisable]


def test_tuner_switching_slides_resets_the_automatic_threshold(cmu_path, ndpi_path, shared_slides):
    lab = Lab(shared_slides, select=str(cmu_path))
    tune = lab.panels["Tune"]
    t = tune.tuner
    t.threshold.value = (10 ** t.threshold.min + t.threshold.value) / 2  # a manual threshold on the first slide
    assert t.auto.value is False
    t.closing.value = 2
    lab.panels["Slides"].show(str(ndpi_path))
    t2 = tune.tuner
    assert t2.auto.value is True and t2.closing.value == 2  # other settings carry over, the threshold does not
    assert t2.mask.params["auto_threshold"]
    # the Tune tab shows an invalid value once (in the tuner), not a second time in the panel
    t2.tile_size.value = 0
    assert "tile_size" in t2.errors.text and tune.errors.text == "" and lab.state.params is None
    tiling = lab.panels["Tiling"]
    assert tiling.start() is False and "the Tune tab holds an invalid value" in tiling.errors.text
    lab.close()


def test_ui_package_exports():
    import wsi_lab.ui as ui
    from wsi_lab.ui import Lab as Lab2
    from wsi_lab.ui import SlideBrowser, SlideViewer
    from wsi_lab.ui import ThresholdTuner as T2
    from wsi_lab.ui import TilingPanel as TP

    assert Lab2 is Lab and T2 is ThresholdTuner and TP is TilingPanel
    assert {"Lab", "SlideViewer", "SlideBrowser", "ThresholdTuner", "TilingPanel", "register_panel"} <= set(ui.__all__)
    assert SlideBrowser.__name__ == "SlideBrowser" and SlideViewer.__name__ == "SlideViewer"
