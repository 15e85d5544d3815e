"""Prediction overlays drawn from saved predictions alone (no slide file exists in these tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsi_lab.errors import InvalidParameterError
from wsi_lab.overlays import predictions as po


def _preds(n: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cells = rng.choice(200, n, replace=False)  # distinct cells of a 20 x 10 grid of 100-px tiles
    xs, ys = (cells % 20) * 100, (cells // 20) * 100
    p = rng.random(n)
    t = pd.DataFrame({"slide_id": "missing-slide", "x": xs, "y": ys, "level": 0, "read_size": 100, "tile_size": 32,
                      "prob_normal": 1 - p, "prob_tumour": p, "pred": np.where(p > 0.5, "tumour", "normal"),
                      "attention": p / p.sum(), **{f"z_{i:02d}": rng.normal(size=n) for i in range(5)}})
    t.attrs["wsi_lab"] = {"slide_dimensions": [2000, 1000], "slide_path": "/nonexistent/missing-slide.svs",
                          "predict": {"classes": ["normal", "tumour"]}}
    return t


@pytest.mark.parametrize("kind", po.PREDICTION_KINDS)
@pytest.mark.parametrize("out_size", [(2000, 1000), (401, 203), (97, 49), (20, 10)])
def test_a_tiles_overlay_pixel_lands_inside_its_box(kind, out_size):
    t = _preds()
    layer = po.layer_for(t, kind, k=3)
    ow, oh = out_size
    rgba = layer.render_region((0, 0, 2000, 1000), out_size, apply_opacity=False)
    rows, cols = np.nonzero(rgba[..., 3])
    assert len(rows) > 0
    cx, cy = (cols + 0.5) * 2000 / ow, (rows + 0.5) * 1000 / oh
    inside = np.zeros(len(rows), bool)
    for x, y in zip(t.x, t.y):
        inside |= (cx >= x) & (cx < x + 100) & (cy >= y) & (cy < y + 100)
    assert inside.all()
    # every tile shows at least its centre pixel, with the tile's own colour
    for i, (x, y) in enumerate(zip(t.x, t.y)):
        c, r = int((x + 50) * ow / 2000), int((y + 50) * oh / 1000)
        assert rgba[r, c, 3] == 255, (i, x, y)


def test_pred_map_uses_the_model_class_order_and_names():
    t = _preds()
    t["pred"] = "tumour"  # normal is absent here but keeps its place and colour
    legend = po.prediction_layer(t).legend()
    assert [c["value"] for c in legend["categories"]] == ["normal", "tumour"]
    assert po.probability_layer(t).legend()["column"] == "prob_tumour"
    assert po.probability_layer(t, "normal").legend()["vmax"] == 1.0


def test_pca_latent_colours_and_kmeans_are_deterministic():
    t = _preds(40)
    a = po.layer_for(t, "latent").render_region((0, 0, 2000, 1000), (200, 100))
    b = po.layer_for(t, "latent").render_region((0, 0, 2000, 1000), (200, 100))
    assert np.array_equal(a, b) and len(np.unique(a.reshape(-1, 4), axis=0)) > 10
    x = np.concatenate([np.zeros((10, 2)), np.ones((10, 2)) * 10])
    labels = po.kmeans(x, 2, seed=3)
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[-1]


def test_png_has_the_legend_drawn_in(tmp_path):
    t = _preds()
    for kind in po.PREDICTION_KINDS:
        path = po.render_png(t, po.layer_for(t, kind, k=3), tmp_path / f"{kind}.png", max_size=400)
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        assert arr.shape[1] == 400 + 200 and arr.shape[0] >= 200
        legend = arr[:, 400:]
        assert (legend < 128).any()  # text/swatches in the legend panel
    heat = np.asarray(Image.open(tmp_path / "heatmap.png").convert("RGB"))[:, 400:]
    assert len(np.unique(heat.reshape(-1, 3), axis=0)) > 50  # a colour bar


def test_missing_columns_are_refused_by_name():
    t = _preds().drop(columns=["attention", "prob_tumour"])
    with pytest.raises(InvalidParameterError, match="attention"):
        po.attention_layer(t)
    with pytest.raises(InvalidParameterError, match="prob_stroma"):
        po.probability_layer(_preds(), "stroma")
    with pytest.raises(InvalidParameterError, match="z_NN"):
        po.latent_layer(_preds()[["x", "y", "read_size"]])


def test_prediction_layers_compose_over_a_slide_like_any_layer(tmp_path):
    from wsi_lab.overlays import render_overview
    from wsi_lab.slide import open_slide
    from wsi_lab.testing import make_slide

    path = make_slide(tmp_path / "s.svs", 2000, 1000, tile=256, seed=1, source="procedural", associated=False)
    t = _preds()
    with open_slide(path) as slide:
        plain = render_overview(slide, [], max_size=400)
        over = render_overview(slide, [po.prediction_layer(t), po.latent_layer(t)], max_size=400)
    assert over.shape == plain.shape and not np.array_equal(over, plain)
    x, y = int(t.x.iloc[0]), int(t.y.iloc[0])  # a tile's box changes; a pixel outside every tile does not
    r, c = int((y + 50) * over.shape[0] / 1000), int((x + 50) * over.shape[1] / 2000)
    assert not np.array_equal(over[r, c], plain[r, c])
    taken = {(int(a) // 100, int(b) // 100) for a, b in zip(t.x, t.y)}
    free = next((cx, cy) for cy in range(10) for cx in range(20) if (cx, cy) not in taken)
    r, c = int((free[1] * 100 + 50) * over.shape[0] / 1000), int((free[0] * 100 + 50) * over.shape[1] / 2000)
    assert np.array_equal(over[r, c], plain[r, c])


NAMES = ("heatmap:tumour", "pred", "pca", "clusters:3", "attention")


def test_every_prediction_layer_is_reachable_by_name_in_the_viewer_and_the_overlay_cli(tmp_path):
    """Issue 9: each overlay kind by name, from a predictions table: SlideViewer.add_layer (kernel side)
    and ``wsi-lab overlay --layer NAME --legend`` (a PNG of the slide with the layer and its legend)."""
    from wsi_lab.cli import main
    from wsi_lab.testing import make_slide
    from wsi_lab.ui.viewer import SlideViewer

    path = make_slide(tmp_path / "s.svs", 2000, 1000, tile=256, seed=1, source="procedural", associated=False)
    t = _preds().assign(slide_id="s", patient_id="p", mpp=0.5, tissue_fraction=1.0)
    viewer = SlideViewer(path, table=t)
    try:
        for name in NAMES:
            viewer.add_layer(name)
        legends = {e["name"]: e["legend"] for e in viewer.layers}
        names = list(legends)
        assert len(names) == 5 and [names[i] for i in (0, 1, 3, 4)] == ["prob_tumour", "pred", "clusters (k=3)",
                                                                         "attention"]
        assert legends["prob_tumour"]["vmin"] == 0.0 and legends["prob_tumour"]["vmax"] == 1.0
        assert [c["value"] for c in legends["pred"]["categories"]] == ["normal", "tumour"]
        assert legends[names[2]]["type"] == "rgb" and legends[names[2]]["method"] == "pca"
        assert len(legends["clusters (k=3)"]["categories"]) == 3
        with pytest.raises(InvalidParameterError, match="prob_stroma"):
            viewer.add_layer("heatmap:stroma")
        with pytest.raises(InvalidParameterError, match="whole number"):
            viewer.add_layer("clusters:many")
    finally:
        viewer.close()

    table = tmp_path / "pred.parquet"
    t.to_parquet(table)
    plain = tmp_path / "plain.png"
    assert main(["overlay", str(path), "-o", str(plain), "--max-size", "400"]) == 0
    base = np.asarray(Image.open(plain).convert("RGB"))
    x, y = int(t.x.iloc[0]), int(t.y.iloc[0])
    r, c = int((y + 50) * base.shape[0] / 1000), int((x + 50) * base.shape[1] / 2000)
    for name in NAMES:
        out = tmp_path / f"{name.replace(':', '_')}.png"
        assert main(["overlay", str(path), "--table", str(table), "--layer", name, "--legend", "-o", str(out),
                     "--max-size", "400"]) == 0
        arr = np.asarray(Image.open(out).convert("RGB"))
        assert arr.shape[0] >= base.shape[0] and arr.shape[1] == base.shape[1] + 200, name
        assert not np.array_equal(arr[r, c], base[r, c]), name  # the tile's box is drawn over
        assert (arr[:, base.shape[1]:] < 128).any(), name  # legend text and swatches
