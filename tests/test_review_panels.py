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
        # k-means only once the clusters are coloured: the default colour is the first other column
        assert ex.color.value == "pred" and {"cluster", "label", "slide_id", "prob_b"} <= set(ex.color.options)
        assert "cluster" not in ex.table.columns and ex.scatter.legend["kind"] == "categorical"
        assert "embed_x" in ex.table.columns and "embed_x" not in preds.columns  # the caller's table untouched
        ex.color.value = "cluster"
        assert ex.table["cluster"].astype(str).str.startswith("c").all()
        assert [e[0] for e in ex.scatter.legend["entries"]] == list(ex.table["cluster"].cat.categories)
        ex.color.value = "prob_b"  # a number: 255 levels of a colormap
        codes = np.frombuffer(ex.scatter.codes, np.uint8)
        assert ex.scatter.legend["kind"] == "continuous" and len(codes) == len(ex.table)
        assert codes[np.argmax(ex.table["prob_b"].to_numpy())] == 254
        # a lasso in the page: its indices arrive as one uint32 buffer
        ex.scatter.set_state({"selection": memoryview(np.array([1, 2], np.uint32).tobytes())})
        assert ex.selected.tolist() == [1, 2] and len(ex.gallery.images) == sum(ex.table.slide_id.iloc[[1, 2]] == "s0")
        s0 = np.flatnonzero(ex.table["slide_id"].to_numpy() == "s0")
        s1 = np.flatnonzero(ex.table["slide_id"].to_numpy() == "s1")
        ex.select([*s0[:3], *s1[:4]])  # points of both slides: only the shown slide's are drawn on it
        boxes = np.frombuffer(ex.viewer.highlight, np.float32).reshape(-1, 4)  # drawn by the browser
        on_s0 = ex.table.iloc[s0[:3]]
        assert sorted(ex.scatter.selected.tolist()) == sorted([*s0[:3], *s1[:4]])  # drawn highlighted in the page
        assert len(ex.selected) == 7 and boxes.tolist() == [[r.x, r.y, r.read_size, r.read_size] for r in on_s0.itertuples()]
        assert not ex.viewer.layers  # no overlay layer: no server-rendered tiles for a selection
        assert len(ex.gallery.images) == 3
        ex.viewer.viewport = [0.0, 0.0, 300.0, 300.0]
        ex.action("view")  # tiles whose centre is in view -> their points
        assert sorted(ex.selected.tolist()) == sorted(s0[(ex.table.x[s0] < 236) & (ex.table.y[s0] < 236)].tolist())
        ex.action("clear")
        assert len(ex.selected) == 0 and ex.viewer.highlight == b""
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
    assert tab.children[-1].store.folder == tmp_path / "review"  # brushed sets go to the same decisions
    tab.children[-1].close()


def _region_pixels(viewer):
    """The drawn-region layer of ``viewer`` as its mask (None when not shown)."""
    from wsi_lab.overlays import Layer

    entry = [e for e in viewer.layers if e["name"] == "drawn region"]
    return None if not entry else Layer.from_json(entry[0]["payload"]["layer"]).mask


def test_the_region_being_drawn_is_a_layer_that_follows_the_clicks(tmp_path, preds):
    from wsi_lab.ui.review import ReviewPanel

    panel = ReviewPanel(preds, tmp_path / "review", reviewer="dr", tile_source="comm")
    try:
        layered, plain = panel.viewers.layered, panel.viewers.plain
        panel.action("draw")
        assert _region_pixels(layered) is None
        panel._on_click(0, 0, None)
        one = _region_pixels(layered)
        assert one is not None and 0 < one.sum() and _region_pixels(plain) is not None  # a dot at the corner
        panel._on_click(300, 0, None)
        two = _region_pixels(layered)
        assert two.sum() > one.sum() and not two[two.shape[0] // 2:].any()  # an edge along the top
        panel._on_click(300, 300, None)
        panel._on_click(0, 300, None)
        four = _region_pixels(layered)
        w, h = panel.viewers.slide.dimensions
        iy, ix = int(150 / h * four.shape[0]), int(150 / w * four.shape[1])
        assert four[iy, ix] and not four[-1, -1] and four.sum() > two.sum()  # the inside is filled
        panel.layer_kind.value = "decisions"  # a new layer kind keeps the region on top
        assert [e["name"] for e in layered.layers] == ["decisions", "drawn region"]
        panel.label.value = "a"
        panel.action("region")
        assert _region_pixels(layered) is None and _region_pixels(plain) is None and len(panel.store.effective("s0")) == 4
    finally:
        panel.close()


def test_a_brushed_set_is_accepted_or_relabelled_as_one_batch(tmp_path, preds):
    from wsi_lab.review import DecisionStore
    from wsi_lab.ui.explorer import LatentExplorer
    from wsi_lab.ui.review import ReviewPanel

    store = DecisionStore(tmp_path / "review", "dr")
    ex = LatentExplorer(preds, tile_source="comm", n=5, decisions=store)
    panel = ReviewPanel(preds, store)
    try:
        ex.action("relabel")
        assert "nothing selected" in ex.errors.text and len(store) == 0
        s0 = np.flatnonzero(ex.table["slide_id"].to_numpy() == "s0")
        s1 = np.flatnonzero(ex.table["slide_id"].to_numpy() == "s1")
        ex.select([*s0[:3], *s1[:2]])
        ex.label.value = "b"
        ex.action("relabel")  # five tiles on two slides, one batch
        eff = store.effective()
        assert len(eff) == 5 and set(eff["label"]) == {"b"} and eff["batch"].nunique() == 1
        assert set(eff["source"]) == {"set"} and store.geojson_path("s1").exists()
        ex.action("draw")
        for xy in [(0, 0), (300, 0), (300, 300), (0, 300)]:
            ex._on_click(*xy, None)
        assert [e["name"] for e in ex.viewer.layers][-1] == "drawn region"
        ex.action("region")  # the region's points are the selection now
        ex.action("accept")
        eff = store.effective("s0")
        inside = ex.table.iloc[ex.selected]
        both = len(set(s0[:3]) | set(ex.selected.tolist()))  # the region may hold tiles relabelled before
        assert len(ex.selected) == 4 and len(eff) == both and "wsi-explorer-decided" in ex.status.value
        got = eff.set_index(["x", "y"])["label"]
        assert all(got[(int(r.x), int(r.y))] == r.pred for r in inside.itertuples())  # accepted: the model's answer
        panel._after_decision("accept")  # the review panel on the same store sees them
        assert panel.queue.options[0][0].endswith(f"{both} reviewed")
        ex.action("undo")  # one undo takes back the whole accepted set
        assert len(store.effective("s0")) == 3
        ex.action("undo")
        assert len(store) == 0 and not ex.errors.text
        assert len(DecisionStore(tmp_path / "review").effective()) == 0  # on disk too
    finally:
        ex.close()
        panel.close()


def test_explorer_reads_only_the_embedded_latents_from_parquet(tmp_path, preds):
    from wsi_lab.data.table import write_table
    from wsi_lab.ui.explorer import LatentExplorer

    t = preds.assign(feat_0=1.0, feat_1=2.0)
    t.attrs = preds.attrs
    write_table(t, tmp_path / "p.parquet")
    ex = LatentExplorer(str(tmp_path / "p.parquet"), tile_source="comm")  # z_NN first: feat_NN not read
    try:
        assert "feat_0" not in ex.table.columns and {"z_00", "pred", "slide_id"} <= set(ex.table.columns)
    finally:
        ex.close()
    ex = LatentExplorer(str(tmp_path / "p.parquet"), columns=["feat_0", "feat_1"], tile_source="comm")
    try:
        assert "feat_1" in ex.table.columns and not [c for c in ex.table.columns if c.startswith("z_")]
    finally:
        ex.close()


def test_explorer_refuses_a_damaged_parquet_with_a_typed_error(tmp_path):
    from wsi_lab.errors import DataError
    from wsi_lab.ui.explorer import LatentExplorer

    bad = tmp_path / "preds.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="preds.parquet"):
        LatentExplorer(str(bad))


def test_explorer_keeps_jupyter_scatter_selectable(preds):
    from wsi_lab.errors import InvalidParameterError
    from wsi_lab.ui.explorer import LatentExplorer

    with pytest.raises(InvalidParameterError, match="scatter must be one of"):
        LatentExplorer(preds, scatter="bokeh")
    ex = LatentExplorer(preds, tile_source="comm", scatter="jupyter-scatter")
    try:
        assert type(ex.plot).__name__ == "JupyterScatter" and "cluster" in ex.table.columns  # its data: every column
        ex.plot.selection = np.array([0, 1], np.uint32)  # as its lasso sets it
        assert ex.selected.tolist() == [0, 1]
        ex.select([2])
        assert ex.scatter.selected.tolist() == [2]
        ex.color_by("prob_b")
    finally:
        ex.close()
