"""Review decisions: saved as they are made (Parquet + QuPath GeoJSON), reloaded by a new store, undone,
refused on bad input without losing what was written, and applied as the next training table's labels;
galleries and nearest neighbours."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests._traindata import make_cohort
from wsi_lab.data.table import read_table
from wsi_lab.errors import DataError, InvalidParameterError
from wsi_lab.review import (
    DecisionStore,
    NeighbourIndex,
    SlidePoints,
    apply_decisions,
    tile_images,
    tiles_in_polygon,
    top_tiles,
)


def predictions(folder, seed: int = 0) -> pd.DataFrame:
    """A predictions-shaped table over two generated slides: prob_a/prob_b, pred and 8 latents."""
    table = read_table(make_cohort(folder, slides=2))
    rng = np.random.default_rng(seed)
    p = rng.random(len(table)).astype(np.float32)
    table["prob_a"], table["prob_b"] = 1 - p, p
    table["pred"] = np.where(p > 0.5, "b", "a")
    for i in range(8):
        table[f"z_{i:02d}"] = rng.normal(size=len(table)).astype(np.float32)
    table.attrs["wsi_lab"]["predict"] = {"classes": ["a", "b"], "kind": "classifier"}
    return table


@pytest.fixture(scope="module")
def preds(tmp_path_factory) -> pd.DataFrame:
    return predictions(tmp_path_factory.mktemp("cohort"))


def test_decisions_are_written_as_made_and_reload_in_a_new_store(tmp_path, preds):
    store = DecisionStore(tmp_path / "review", reviewer="dr. a")
    s0 = preds[preds.slide_id == "s0"]
    store.accept(s0.iloc[0])
    store.relabel(s0.iloc[[1, 2]], "tumour")
    # a new store (a restarted kernel) finds them, with who and when
    again = DecisionStore(tmp_path / "review")
    eff = again.effective()
    assert len(eff) == 3 and set(eff["reviewer"]) == {"dr. a"}
    assert eff.set_index("x").loc[int(s0.iloc[1].x), "label"] == "tumour"
    assert eff["time"].dt.tz is not None and (pd.Timestamp.now(tz="UTC") - eff["time"]).max() < pd.Timedelta("1min")
    assert eff.iloc[0]["label"] == s0.iloc[0]["pred"] and eff.iloc[0]["action"] == "accept"
    gj = json.loads((tmp_path / "review" / "s0.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 3
    names = sorted(f["properties"]["classification"]["name"] for f in gj["features"])
    assert names.count("tumour") == 2
    assert all(len(f["properties"]["classification"]["color"]) == 3 for f in gj["features"])
    assert not list((tmp_path / "review").glob("*.part"))  # atomic: no temp files left


def test_undo_takes_back_the_last_batch_and_a_later_decision_wins(tmp_path, preds):
    store = DecisionStore(tmp_path, reviewer="r")
    row = preds.iloc[[0]]
    store.relabel(row, "x")
    store.relabel(row, "y")
    assert store.effective()["label"].tolist() == ["y"]
    assert store.undo() == 1
    assert DecisionStore(tmp_path).effective()["label"].tolist() == ["x"]
    assert store.undo() == 0 and store.undo() is None
    assert len(DecisionStore(tmp_path)) == 0 and len(DecisionStore(tmp_path).decisions) == 2  # kept, marked undone


def test_a_region_relabels_the_tiles_whose_centre_is_inside_and_exports_the_polygon(tmp_path, preds):
    s1 = preds[preds.slide_id == "s1"]
    square = [(0, 0), (300, 0), (300, 300), (0, 300)]  # 128-px tiles: centres 64 and 192 are inside
    inside = tiles_in_polygon(s1, square)
    assert sorted(zip(inside.x, inside.y)) == [(0, 0), (0, 128), (128, 0), (128, 128)]
    triangle = tiles_in_polygon(s1, [(0, 0), (300, 0), (0, 300)])
    assert sorted(zip(triangle.x, triangle.y)) == [(0, 0), (0, 128), (128, 0)]
    store = DecisionStore(tmp_path)
    store.decide_region(preds, square, "stroma", slide_id="s1")
    assert set(store.effective("s1")["source"]) == {"region"} and len(store.effective("s1")) == 4
    gj = json.loads(store.geojson_path("s1").read_text())
    ann = [f for f in gj["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(ann) == 1 and ann[0]["properties"]["classification"]["name"] == "stroma"
    ring = ann[0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    with pytest.raises(InvalidParameterError, match="slides"):
        store.decide_region(preds, square, "stroma")  # two slides: which one?
    with pytest.raises(InvalidParameterError, match="three"):
        store.decide_region(preds, square[:2], "stroma", slide_id="s1")


def test_decisions_become_the_label_column_of_the_next_training_table(tmp_path, preds):
    store = DecisionStore(tmp_path)
    store.relabel(preds.iloc[[3, 4]], "c")
    store.accept(preds.iloc[[5]])
    out = apply_decisions(preds, tmp_path)
    changed = out["label"] != preds["label"]
    assert out.loc[[3, 4], "label"].tolist() == ["c", "c"]
    assert out.loc[5, "label"] == preds.loc[5, "pred"]
    assert changed.sum() <= 3 and out.loc[~out.index.isin([3, 4, 5]), "label"].equals(preds.loc[~preds.index.isin([3, 4, 5]), "label"])
    assert out.attrs["wsi_lab"]["review"]["labels_from_review"] == 3
    assert "label" in preds.columns and preds.loc[3, "label"] != "c"  # the input is not changed
    unlabelled = apply_decisions(preds.drop(columns=["label"]), store)
    assert unlabelled["label"].notna().sum() == 3


def test_bad_input_is_refused_and_a_damaged_file_is_never_overwritten(tmp_path, preds):
    store = DecisionStore(tmp_path)
    with pytest.raises(InvalidParameterError, match="no 'pred'"):
        store.accept(preds.drop(columns=["pred"]).iloc[[0]])
    with pytest.raises(InvalidParameterError, match="no tiles"):
        store.relabel(preds.iloc[:0], "x")
    with pytest.raises(InvalidParameterError, match="label"):
        store.relabel(preds.iloc[[0]], "")
    assert not store.path.exists()  # nothing was decided, nothing written
    store.relabel(preds.iloc[[0]], "x")
    store.path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="decisions.parquet"):
        DecisionStore(tmp_path)
    assert store.path.read_bytes() == b"not parquet"


def test_galleries_rank_by_score_and_neighbours_come_nearest_first(preds):
    top = top_tiles(preds, "prob_b", 5)
    assert top["prob_b"].is_monotonic_decreasing and top["prob_b"].iloc[0] == preds["prob_b"].max()
    low = top_tiles(preds, n=3, lowest=True)  # default: the last class's probability
    assert low["prob_b"].iloc[0] == preds["prob_b"].min()
    index = NeighbourIndex(preds)
    near = index.query(7, 4)
    x = preds[[f"z_{i:02d}" for i in range(8)]].to_numpy()
    d = np.linalg.norm(x - x[7], axis=1)
    assert near.index.tolist() == [int(i) for i in np.argsort(d)[1:5]]
    assert np.allclose(near["distance"], np.sort(d)[1:5], atol=1e-4) and 7 not in near.index
    with pytest.raises(InvalidParameterError):
        index.query(len(preds), 3)
    pics = tile_images(top.iloc[:2], 32)
    assert len(pics) == 2 and pics[0].shape == (32, 32, 3) and pics[0].dtype == np.uint8 and pics[0].std() > 0
    from wsi_lab.data.tile_reader import SlideCache

    cache = SlideCache()
    again = tile_images(top.iloc[:2], 32, cache=cache)  # through the caller's cache, left open for the next call
    assert len(cache) == 1 and np.array_equal(again[0], pics[0])
    cache.close()


def test_slide_points_pick_one_slides_tiles_of_a_selection_and_their_boxes(preds):
    from wsi_lab.review.layers import highlight_boxes

    table = preds.reset_index(drop=True)
    slide = str(table["slide_id"].iloc[-1])
    on = SlidePoints(table, slide)
    points = np.array([len(table) - 1, 0, 3, len(table) - 2])
    mine = on.positions(points)
    expected = [p for p in points if str(table["slide_id"].iloc[p]) == slide]
    assert mine.tolist() == expected and 0 < len(mine) < len(points)  # both slides among the points, order kept
    assert np.array_equal(on.boxes_of(mine), highlight_boxes(table.iloc[mine]))
    assert on.positions([]).tolist() == [] and on.boxes_of(on.positions([])).shape == (0, 4)
    with pytest.raises(InvalidParameterError, match="point positions"):
        on.positions([len(table)])
