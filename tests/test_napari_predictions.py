"""Issue 9 in napari: prediction layers by name (a class heatmap, k-means clusters of latents) drawn
over a real slide on a virtual X display, each tile's colour inside that tile's box. TensorFlow must not
be imported in this process (it breaks napari's OpenGL)."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_lab import open_slide
from wsi_lab.overlays import colormap_lut

napari = pytest.importorskip("napari", reason="napari is not installed: pip install 'wsi-lab[napari]'")
from wsi_lab.napari import open_in_napari  # noqa: E402

from .test_napari import _camera, _canvas_xy, _settle, tile_table, xdisplay  # noqa: E402,F401


def _predictions(slide):
    t = tile_table(slide, step=512)
    n = len(t)
    rng = np.random.default_rng(0)
    t["prob_b"] = 0.0
    t.loc[n // 2, "prob_b"] = 1.0
    t["prob_a"] = 1 - t["prob_b"]
    t["pred"] = np.where(t["prob_b"] > 0.5, "b", "a")
    group = (t["x"] >= t["x"].median()).to_numpy()  # two clusters of latents: left and right half
    for k in range(4):
        t[f"z_{k:02d}"] = np.where(group, 5.0, -5.0) + rng.normal(0, 0.1, n)
    t.attrs["wsi_lab"] = {"predict": {"classes": ["a", "b"]}}
    return t, group


def _box_colour(viewer, img, x, y, size):
    """Median screenshot colour over the inner half of the level-0 box (x, y, size)."""
    sy, sx = viewer.layers[0].scale[-2:]
    r0, c0 = _canvas_xy(viewer, img, (y + size / 4) * sy, (x + size / 4) * sx)
    r1, c1 = _canvas_xy(viewer, img, (y + 3 * size / 4) * sy, (x + 3 * size / 4) * sx)
    box = img[int(np.ceil(r0)):int(r1), int(np.ceil(c0)):int(c1), :3].reshape(-1, 3)
    assert len(box) > 4, "the tile is too small on the canvas to sample"
    return np.median(box, 0)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])


@pytest.mark.napari
def test_heatmap_and_cluster_layers_colour_their_tiles_boxes(xdisplay, cmu_path):  # noqa: F811
    slide = open_slide(cmu_path)
    t, group = _predictions(slide)
    viewer = open_in_napari(slide, overlays=["heatmap:b", "clusters:2"], table=t)
    try:
        assert [lay.name for lay in viewer.layers][1:] == ["prob_b", "clusters (k=2)"]
        heat, clusters = viewer.layers["prob_b"], viewer.layers["clusters (k=2)"]
        assert heat.metadata["legend"]["vmax"] == 1.0 and heat.metadata["legend"]["cmap"] == "magma"
        heat.opacity, clusters.visible = 1.0, False
        img = _settle(viewer)
        lut = colormap_lut("magma")
        hot, cold = t.index[t["prob_b"] == 1.0][0], 0
        for i, want in ((hot, lut[255]), (cold, lut[0])):
            got = _box_colour(viewer, img, t.loc[i, "x"], t.loc[i, "y"], 512)
            assert np.abs(got - want).max() <= 12, (i, got, want)

        heat.visible, clusters.visible, clusters.opacity = False, True, 1.0
        img = _settle(viewer)
        colours = {str(c["value"]): _rgb(c["color"]) for c in clusters.metadata["legend"]["categories"]}
        assert len(colours) == 2
        seen = {}
        for i in (0, len(t) - 1, int(np.argmax(group)), int(np.argmin(group))):
            got = _box_colour(viewer, img, t.loc[i, "x"], t.loc[i, "y"], 512)
            label = min(colours, key=lambda c: np.abs(colours[c] - got).max())
            assert np.abs(colours[label] - got).max() <= 12, (i, got, colours)
            seen.setdefault(bool(group[i]), set()).add(label)
        # one cluster per half of the slide, and the two halves differ
        assert all(len(v) == 1 for v in seen.values()) and seen[True] != seen[False]
    finally:
        viewer.close()


def _write_predictions(tmp_path, slide, path):
    from wsi_lab.infer.run import write_predictions

    t, _ = _predictions(slide)
    t.attrs["wsi_lab"] = {"slides": {slide.slide_id: {"path": str(path)}}, "predict": {"classes": ["a", "b"]}}
    return write_predictions(t, tmp_path / "pred.parquet"), t


def test_reader_takes_predictions_with_a_slide_and_declines_other_tables(tmp_path, cmu_path):
    from wsi_lab.napari import napari_get_reader, read_prediction_layers

    pred, _ = _write_predictions(tmp_path, open_slide(cmu_path), cmu_path)
    assert napari_get_reader(str(pred)) is read_prediction_layers
    _predictions(open_slide(cmu_path))[0].to_parquet(tmp_path / "bare.parquet")  # no slide path recorded
    assert napari_get_reader(str(tmp_path / "bare.parquet")) is None


@pytest.mark.napari
def test_plugin_opens_a_predictions_table_with_its_slide_and_layers(xdisplay, cmu_path, tmp_path):  # noqa: F811
    slide = open_slide(cmu_path)
    pred, t = _write_predictions(tmp_path, slide, cmu_path)
    viewer = napari.Viewer(show=True)
    try:
        layers = viewer.open(str(pred), plugin="wsi-lab")
        sid = slide.slide_id
        # no attention column: no attention layer
        assert [lay.name for lay in layers] == [sid] + [f"{sid}: {n}" for n in ("prob_b", "pred", "latent (pca)",
                                                                                  "clusters (k=6)")]
        for lay in layers[1:]:
            lay.visible = False
        heat = viewer.layers[f"{sid}: prob_b"]
        heat.visible, heat.opacity = True, 1.0
        img = _settle(viewer)
        hot = t.index[t["prob_b"] == 1.0][0]
        got = _box_colour(viewer, img, t.loc[hot, "x"], t.loc[hot, "y"], 512)
        assert np.abs(got - colormap_lut("magma")[255]).max() <= 12, got
    finally:
        viewer.close()
