"""ReviewPanel and LatentExplorer driven from the kernel (the browser tests cover the front end): keys,
a drawn region, undo, the two viewers kept at one view, brushing both ways, and the Lab tabs."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_review import predictions
from wsi_lab.data.table import write_table


@pytest.fixture(scope="module")
def preds(tmp_path_factory):
    return predictions(tmp_path_factory.mktemp("cohort"))


def test_review_keys_region_undo_and_synced_views(tmp_path, preds):
    from wsi_lab.ui.review import ReviewPanel

    panel = ReviewPanel(preds, tmp_path / "review", reviewer="dr", tile_source="comm")
    try:
        assert [v for _, v in panel.queue.options] == ["s0", "s1"] and panel.classes == ["a", "b"]
        panel.top.index = 0
        held = panel.current
        panel.top.press("2")  # relabel as "b", then the next tile
        eff = panel.store.effective()
        assert len(eff) == 1 and eff.iloc[0]["label"] == "b" and (eff.iloc[0]["x"], eff.iloc[0]["y"]) == (held["x"], held["y"])
        assert panel.top.index == 1 and panel.top.marked == [0]
        panel.top.press("u")
        assert len(panel.store.effective()) == 0
        panel.action("draw")
        for xy in [(0, 0), (300, 0), (300, 300), (0, 300)]:
            panel._on_click(*xy, None)
        panel.label.value = "a"
        panel.action("region")
        assert not panel.errors.text and len(panel.store.effective("s0")) == 4
        panel.action("region")  # no corners left: a readable message, nothing raised
        assert "draw a region first" in panel.errors.text
        panel.viewers.layered.viewport = [10.0, 20.0, 400.0, 300.0]  # the user pans the layered view
        assert panel.viewers.plain.viewport[2:] == [400.0, 300.0] and abs(panel.viewers.plain.viewport[0] - 10) < 1
        panel.viewers.plain.viewport = [10.0, 20.0, 400.0, 300.0]  # its echo does not bounce back
        assert panel.viewers.layered.viewport == [10.0, 20.0, 400.0, 300.0]
        panel.layer_kind.value = "decisions"
        assert [e["name"] for e in panel.viewers.layered.layers] == ["decisions"]
    finally:
        panel.close()


def test_explorer_brushes_both_ways(tmp_path, preds):
    from wsi_lab.ui.explorer import LatentExplorer

    ex = LatentExplorer(preds, tile_source="comm", n=5)
    try:
        assert ex.color.value == "cluster" and {"pred", "label", "slide_id", "prob_b"} <= set(ex.color.options)
        s0 = np.flatnonzero(ex.table["slide_id"].to_numpy() == "s0")
        s1 = np.flatnonzero(ex.table["slide_id"].to_numpy() == "s1")
        ex.select([*s0[:3], *s1[:4]])  # points of both slides: only the shown slide's are drawn on it
        layer = [e for e in ex.viewer.layers if e["name"] == "selected tiles"]
        assert len(ex.selected) == 7 and len(layer) == 1 and layer[0]["legend"]["count"] == 3
        assert len(ex.gallery.images) == 3
        ex.viewer.viewport = [0.0, 0.0, 300.0, 300.0]
        ex.action("view")  # tiles whose centre is in view -> their points
        assert sorted(ex.selected.tolist()) == sorted(s0[(ex.table.x[s0] < 236) & (ex.table.y[s0] < 236)].tolist())
        ex.action("clear")
        assert len(ex.selected) == 0 and not [e for e in ex.viewer.layers if e["name"] == "selected tiles"]
    finally:
        ex.close()


def test_lab_tabs_open_a_predictions_file(tmp_path, preds, monkeypatch):
    from wsi_lab.ui.review_tabs import explorer_panel, review_panel

    path = write_table(preds, tmp_path / "preds.parquet")
    monkeypatch.setenv("WSI_LAB_PREDICTIONS", str(path))
    box = review_panel(None)
    panel = box.children[-1]
    assert type(panel).__name__ == "ReviewPanel" and panel.store.folder == tmp_path / "review"
    panel.close()
    tab = explorer_panel(None)
    tab.children[0].children[1].click()
    assert type(tab.children[-1]).__name__ == "LatentExplorer"
    tab.children[-1].close()
