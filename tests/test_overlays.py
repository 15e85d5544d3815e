"""Overlays: alignment of rendered tiles/masks with level-0 boxes at every zoom, colours, legends, JSON."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from wsi_lab.errors import InvalidParameterError
from wsi_lab.overlays import (
    Layer,
    TileLayer,
    category_layer,
    colormap_lut,
    grid_layer,
    heatmap,
    heatmap_layer,
    latent_rgb_layer,
    mask_layer,
    tile_extent,
)


def grid_table(nx=12, ny=9, size=100, x0=37, y0=11, gap=0, level=0, read_size=None):
    xs, ys = np.meshgrid(np.arange(nx), np.arange(ny))
    step = size + gap
    n = nx * ny
    return pd.DataFrame({
        "slide_id": "s", "patient_id": "p",
        "x": x0 + xs.ravel() * step, "y": y0 + ys.ravel() * step,
        "level": level, "read_size": read_size or size, "tile_size": 64, "mpp": 0.5,
        "tissue_fraction": np.linspace(0, 1, n),
    })


def id_layer(table, size):
    """A tile layer whose colour encodes the row number (id + 1 in 24-bit RGB)."""
    ids = np.arange(len(table)) + 1
    colors = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255, np.full_like(ids, 255)], 1).astype(np.uint8)
    return TileLayer(table["x"], table["y"], size, colors, "heatmap", "ids")


def decode_ids(rgba):
    ids = rgba[..., 0].astype(int) | (rgba[..., 1].astype(int) << 8) | (rgba[..., 2].astype(int) << 16)
    return np.where(rgba[..., 3] > 0, ids - 1, -1)


BOXES = [  # (x, y, w, h) level-0 boxes and output sizes: zoomed out, 1:1, zoomed in, odd offsets/aspects
    ((0, 0, 1400, 1000), (140, 100)),
    ((0, 0, 1400, 1000), (1400, 1000)),
    ((123.4, 56.7, 301, 207), (512, 512)),
    ((-200, -150, 900, 700), (97, 61)),
    ((500, 300, 40, 30), (400, 300)),
    ((250.5, 180.25, 3.7, 2.9), (64, 64)),
    ((0, 0, 5000, 5000), (37, 37)),
]


@pytest.mark.parametrize("box,out", BOXES)
def test_tile_pixels_land_inside_their_tile_box(box, out):
    t = grid_table(gap=13)
    size = np.full(len(t), 100.0)
    img = id_layer(t, size).render_region(box, out)
    assert img.shape == (out[1], out[0], 4) and img.dtype == np.uint8
    ids = decode_ids(img)
    bx, by, bw, bh = box
    # level-0 footprint of every output pixel
    cx0 = bx + np.arange(out[0]) * bw / out[0]
    cy0 = by + np.arange(out[1]) * bh / out[1]
    px, py = bw / out[0], bh / out[1]
    rows, cols = np.nonzero(ids >= 0)
    tid = ids[rows, cols]
    tx, ty = t["x"].to_numpy()[tid], t["y"].to_numpy()[tid]
    # each painted pixel's footprint overlaps its tile's box
    assert np.all(cx0[cols] < tx + 100) and np.all(cx0[cols] + px > tx)
    assert np.all(cy0[rows] < ty + 100) and np.all(cy0[rows] + py > ty)
    if px < 100 and py < 100:  # tiles at least a pixel wide: the pixel centre is inside the box
        cx, cy = cx0[cols] + px / 2, cy0[rows] + py / 2
        assert np.all((cx >= tx) & (cx < tx + 100) & (cy >= ty) & (cy < ty + 100))
        # and every pixel whose centre lies in some tile is painted with that tile
        X, Y = np.meshgrid(cx0 + px / 2, cy0 + py / 2)
        rel_x, rel_y = (X - 37) % 113, (Y - 11) % 113
        inside = (rel_x < 100) & (rel_y < 100) & (X >= 37) & (Y >= 11) & (X < 37 + 12 * 113) & (Y < 11 + 9 * 113)
        assert np.array_equal(inside, ids >= 0)
        expect = ((Y - 11) // 113).astype(int) * 12 + ((X - 37) // 113).astype(int)
        assert np.array_equal(ids[inside], expect[inside])


def test_tiles_smaller_than_a_pixel_still_show_once():
    t = pd.DataFrame({"x": [10.0, 5000.0], "y": [10.0, 7000.0], "read_size": [4, 4], "level": 0, "v": [1.0, 2.0]})
    img = heatmap_layer(t, "v", opacity=1).render_region((0, 0, 10000, 10000), (100, 100))
    on = np.argwhere(img[..., 3] > 0)
    assert sorted(map(tuple, on)) == [(0, 0), (70, 50)]  # the pixels holding each tile's centre


def test_overlapping_tiles_later_row_wins_in_any_region():
    t = pd.DataFrame({"x": [0.0, 50.0, 25.0], "y": [0.0, 0.0, 0.0], "read_size": 100, "level": 0, "v": [0.0, 0.5, 1.0]})
    lut = colormap_lut("viridis")
    for box, out in [((0, 0, 200, 100), (200, 100)), ((30, 10, 60, 60), (17, 13))]:
        img = heatmap_layer(t, "v", opacity=1).render_region(box, out)
        # the pixel at level-0 x≈60 lies under all three tiles: the last one (v=1) wins
        col = int((60 - box[0]) * out[0] / box[2])
        assert tuple(img[2, col, :3]) == tuple(lut[255])


def test_tile_extent_levels_and_size0():
    t = grid_table(level=1, read_size=256)
    assert np.all(tile_extent(t, [1.0, 4.0]) == 1024)
    assert np.all(tile_extent(t, SimpleNamespace(level_downsamples=(1.0, 2.0))) == 512)
    with pytest.raises(InvalidParameterError, match="downsamples"):
        tile_extent(t)
    with pytest.raises(InvalidParameterError, match="levels"):
        tile_extent(t, [1.0])
    from .conftest import NDPI

    if NDPI.exists():  # a planned table records its slide: the downsamples come from its header
        t.attrs["wsi_lab"] = {"slide_path": str(NDPI)}
        assert np.all(tile_extent(t) == 512)
        t.attrs["wsi_lab"] = {"level_downsamples": [1.0, 3.0]}
        assert np.all(tile_extent(t) == 768)
    t["size0"] = 300
    assert np.all(tile_extent(t) == 300)
    t0 = grid_table(size=64)
    assert np.all(tile_extent(t0) == 64)


def test_heatmap_layer_nan_transparent_colours_and_legend():
    t = grid_table(nx=4, ny=1)
    t["prob_tumor"] = [0.0, np.nan, 1.0, 0.5]
    layer = heatmap_layer(t, "prob_tumor", cmap="magma", opacity=0.5)
    img = layer.render_region((37, 11, 400, 100), (4, 1))
    lut = colormap_lut("magma")
    assert img[0, 1, 3] == 0  # NaN
    assert tuple(img[0, 0, :3]) == tuple(lut[0]) and tuple(img[0, 2, :3]) == tuple(lut[255])
    assert img[0, 0, 3] == 128 and img[0, 3, 3] == 128  # opacity baked in
    assert layer.render_region((37, 11, 400, 100), (4, 1), apply_opacity=False)[0, 0, 3] == 255
    leg = layer.legend()
    json.dumps(leg)
    assert leg["type"] == "continuous" and leg["column"] == "prob_tumor" and leg["cmap"] == "magma"
    assert (leg["vmin"], leg["vmax"]) == (0.0, 1.0)
    assert leg["colors"][0] == "#000004" and leg["colors"][-1] == "#fcfdbf"
    # explicit range clips
    img2 = heatmap_layer(t, "prob_tumor", vmin=0.25, vmax=0.5, opacity=1).render_region((37, 11, 400, 100), (4, 1))
    assert tuple(img2[0, 2, :3]) == tuple(colormap_lut("viridis")[255])
    # everything NaN -> transparent, legend still JSON-able
    t["prob_tumor"] = np.nan
    layer = heatmap_layer(t, "prob_tumor")
    assert layer.render_region((0, 0, 500, 500), (50, 50))[..., 3].max() == 0
    json.dumps(layer.legend())


def test_heatmap_validation_errors():
    t = grid_table()
    t["label"] = "tumor"
    with pytest.raises(InvalidParameterError, match="no column 'nope'"):
        heatmap_layer(t, "nope")
    with pytest.raises(InvalidParameterError, match="not numbers"):
        heatmap_layer(t, "label")
    with pytest.raises(InvalidParameterError, match="colormap"):
        heatmap_layer(t, "tissue_fraction", cmap="jet")
    with pytest.raises(InvalidParameterError, match="vmin"):
        heatmap_layer(t, "tissue_fraction", vmin=1, vmax=0)
    with pytest.raises(InvalidParameterError):
        heatmap_layer(t, "tissue_fraction").render_region((0, 0, 0, 10), (10, 10))
    with pytest.raises(InvalidParameterError, match="opacity"):
        heatmap_layer(t, "tissue_fraction", opacity=2)
    assert issubclass(InvalidParameterError, ValueError)


def test_categorical_colours_stable_across_tables_and_regions():
    t = grid_table(nx=6, ny=1)
    t["label"] = ["tumor", "stroma", None, "tumor", "necrosis", "stroma"]
    a = category_layer(t, "label", opacity=1)
    b = category_layer(t.iloc[::-1].reset_index(drop=True), "label", opacity=1)
    la, lb = a.legend(), b.legend()
    json.dumps(la)
    assert la == lb and la["type"] == "categorical" and la["column"] == "label"
    assert [c["value"] for c in la["categories"]] == ["necrosis", "stroma", "tumor"]
    colour = {c["value"]: c["color"] for c in la["categories"]}
    img = a.render_region((37, 11, 600, 100), (6, 1))
    hexes = ["#{:02x}{:02x}{:02x}".format(*tuple(p[:3])) for p in img[0]]
    assert hexes[0] == hexes[3] == colour["tumor"] and hexes[1] == colour["stroma"]
    assert img[0, 2, 3] == 0  # missing label
    imgb = b.render_region((37, 11, 600, 100), (6, 1))
    assert np.array_equal(img, imgb)
    # user colours by value, the rest filled from the palette without clashes
    c = category_layer(t, "label", colors={"tumor": "#ff0000"})
    cc = {d["value"]: d["color"] for d in c.legend()["categories"]}
    assert cc["tumor"] == "#ff0000" and len(set(cc.values())) == 3
    # pandas categorical order is respected, integer labels work
    t["cat"] = pd.Categorical(["b", "a", "b", "a", "b", "a"], categories=["b", "a"])
    assert [d["value"] for d in category_layer(t, "cat").legend()["categories"]] == ["b", "a"]
    t["k"] = np.arange(6) % 2
    assert [d["value"] for d in category_layer(t, "k").legend()["categories"]] == [0, 1]
    with pytest.raises(InvalidParameterError, match="colours"):
        category_layer(t, "label", colors=["#000000"])


def test_grid_layer_draws_outlines_inside_tiles():
    t = grid_table(nx=2, ny=1, size=100, x0=0, y0=0, gap=50)
    layer = grid_layer(t, color=(255, 0, 0), line_width=2)
    img = layer.render_region((0, 0, 250, 100), (250, 100))
    on = img[..., 3] > 0
    assert on[0, 0] and on[50, 1] and on[99, 50] and on[50, 98] and on[50, 99]
    assert not on[50, 50] and not on[50, 120]  # interior and gap
    assert on[0, 150] and on[50, 249]
    assert tuple(img[0, 0, :3]) == (255, 0, 0)
    assert layer.kind == "grid" and layer.legend()["color"] == "#ff0000"


def test_mask_layer_aligned_at_every_zoom():
    m = np.zeros((30, 40), bool)
    m[10:20, 5:15] = True  # level-0 box x 40..120, y 80..160 at downsample 8
    tm = SimpleNamespace(mask=m, downsample=8.0, slide_dimensions=(320, 240))
    layer = mask_layer(tm, color=(0, 0, 255), opacity=1.0)
    for box, out in BOXES[:6]:
        img = layer.render_region(box, out)
        bx, by, bw, bh = box
        cx = bx + (np.arange(out[0]) + 0.5) * bw / out[0]
        cy = by + (np.arange(out[1]) + 0.5) * bh / out[1]
        X, Y = np.meshgrid(cx, cy)
        expect = (X >= 40) & (X < 120) & (Y >= 80) & (Y < 160)
        assert np.array_equal(img[..., 3] > 0, expect), box
    assert layer.legend() == {"type": "color", "label": "tissue", "color": "#0000ff"}
    with pytest.raises(InvalidParameterError, match="downsample"):
        mask_layer(m)
    assert mask_layer(m, downsample=8).render_region((0, 0, 320, 240), (40, 30))[..., 3].astype(bool).sum() == 100


def test_json_and_pickle_round_trip_render_identically():
    t = grid_table(nx=5, ny=4)
    t["prob_tumor"] = np.linspace(0, 1, len(t))
    t.loc[3, "prob_tumor"] = np.nan
    t["label"] = np.where(np.arange(len(t)) % 3, "a", "b")
    for c in ("z_00", "z_01", "z_02"):
        t[c] = np.random.default_rng(0).normal(size=len(t))
    m = np.random.default_rng(1).random((20, 30)) > 0.5
    layers = [heatmap_layer(t, "prob_tumor"), category_layer(t, "label"), grid_layer(t, line_width=3),
              latent_rgb_layer(t), mask_layer(m, downsample=25.0)]
    for layer in layers:
        text = layer.to_json()
        back = Layer.from_json(text)
        assert back.kind == layer.kind and back.name == layer.name and back.opacity == layer.opacity
        assert back.legend() == layer.legend()
        for box, out in BOXES[:4]:
            assert np.array_equal(back.render_region(box, out), layer.render_region(box, out))
        assert np.array_equal(pickle.loads(pickle.dumps(layer)).render_region(*BOXES[2]), layer.render_region(*BOXES[2]))
    with pytest.raises(InvalidParameterError):
        Layer.from_json('{"class": "Nope"}')


def test_latent_rgb_layer_maps_columns_to_channels():
    t = grid_table(nx=3, ny=1)
    t["z_00"], t["z_01"], t["z_02"] = [0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [5.0, 5.0, np.nan]
    layer = latent_rgb_layer(t, opacity=1)
    img = layer.render_region((37, 11, 300, 100), (3, 1))
    assert img[0, 0, 0] == 0 and img[0, 1, 0] == 128 and img[0, 0, 1] == 255
    assert img[0, 2, 3] == 0  # NaN latent
    assert layer.kind == "image" and layer.legend()["columns"] == ["z_00", "z_01", "z_02"]
    with pytest.raises(InvalidParameterError):
        latent_rgb_layer(t, columns=("z_00",))


def test_whole_slide_heatmap_matches_real_slide_geometry(cmu_path):
    from wsi_lab import open_slide

    with open_slide(cmu_path) as slide:
        W, H = slide.dimensions
        t = grid_table(nx=W // 256, ny=H // 256, size=256, x0=0, y0=0)
        t["score"] = np.arange(len(t), dtype=float)
        img = heatmap(t, "score", slide, max_size=512)
        assert max(img.shape[:2]) == 512 and img.shape[2] == 4
        assert img.shape == slide.get_thumbnail(512).shape[:2] + (4,)
        img2 = heatmap(t, "score", dimensions=(W, H), downsample=16)
        assert img2.shape == (-(-H // 16), -(-W // 16), 4)
        # the last tile's colour sits at its box (downsample 16)
        last = t.iloc[-1]
        r, c = int(last.y // 16) + 3, int(last.x // 16) + 3
        assert tuple(img2[r, c, :3]) == tuple(colormap_lut("viridis")[255])
        assert img2[-1, -1, 3] == 0  # outside the tiles: transparent
    with pytest.raises(InvalidParameterError, match="dimensions"):
        heatmap(t, "score")


def test_large_table_region_render_is_exact():
    t = grid_table(nx=400, ny=250, size=256, x0=0, y0=0)  # 100k tiles
    t["v"] = np.arange(len(t), dtype=float)
    layer = heatmap_layer(t, "v", opacity=1)
    full = layer.render_region((0, 0, 400 * 256, 250 * 256), (512, 320))
    assert (full[..., 3] == 255).all()
    zoom = id_layer(t, np.full(len(t), 256.0)).render_region((256 * 100 + 10, 256 * 50 + 10, 512, 512), (512, 512))
    ids = decode_ids(zoom)
    assert ids[0, 0] == 50 * 400 + 100 and ids[-1, -1] == 52 * 400 + 102


def test_composite_and_overview_blend_layers_over_the_thumbnail(cmu_path, tmp_path):
    from wsi_lab import open_slide
    from wsi_lab.cli import main
    from wsi_lab.data.table import write_table
    from wsi_lab.overlays import composite, render_overview

    base = np.full((2, 2, 3), 100, np.uint8)
    over = np.zeros((2, 2, 4), np.uint8)
    over[0, 0] = (200, 0, 0, 255)
    over[1, 1] = (0, 200, 0, 128)
    out = composite(base, over)
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[0, 1]) == (100, 100, 100)
    assert tuple(out[1, 1]) == (50, 150, 50)
    with pytest.raises(InvalidParameterError):
        composite(base, np.zeros((3, 3, 4), np.uint8))
    slide = open_slide(cmu_path)
    t = grid_table(nx=4, ny=4, size=256, x0=0, y0=0).assign(slide_id=slide.slide_id)
    t["score"] = 1.0
    thumb = slide.get_thumbnail(256)
    img = render_overview(slide, [heatmap_layer(t, "score", opacity=1.0)], 256)
    assert img.shape == thumb.shape
    covered = int(4 * 256 * thumb.shape[1] / slide.dimensions[0]) - 1
    assert (img[:covered, :covered] == colormap_lut("viridis")[127]).all()  # single value -> mid colour
    assert np.array_equal(img[-5:, -5:], thumb[-5:, -5:])  # no tiles there: the slide shows through
    # the CLI writes the same overview from a Parquet table
    write_table(t, tmp_path / "t.parquet")
    assert main(["overlay", str(cmu_path), "--table", str(tmp_path / "t.parquet"), "--layer", "score",
                 "-o", str(tmp_path / "o.png"), "--max-size", "256"]) == 0
    from PIL import Image

    saved = np.asarray(Image.open(tmp_path / "o.png"))
    assert saved.shape == thumb.shape and (saved[:covered, :covered] != thumb[:covered, :covered]).any()
    assert main(["overlay", str(cmu_path), "--table", str(tmp_path / "t.parquet"), "--layer", "nope",
                 "-o", str(tmp_path / "x.png")]) == 2


# -- tile outlines in level-0 geometry (issue 13, item 4) ----------------------------------------
@pytest.mark.parametrize("tile_size,overlap", [(254, 1), (256, 0), (240, 8)])
def test_grid_outlines_fall_only_on_tile_boundaries_at_every_zoom(tmp_path, tile_size, overlap):
    """Regression: every deep-zoom tile drew an outline at its own edge (x = 253 of a 254-px tile with
    overlap) besides the 256-px tile boundary, so a second grid drifted across the zoomed-in slide. The
    deep-zoom tiles of a level, stitched, must equal one render of the whole level, and every outline pixel
    must sit on a tile boundary."""
    from wsi_lab import open_slide
    from wsi_lab.testing import make_slide
    from wsi_lab.viewing import DeepZoom

    path = make_slide(tmp_path / "s.svs", 3000, 2100, mpp=0.5, seed=3)
    size = 256
    table = grid_table(nx=10, ny=7, size=size, x0=128, y0=64)
    layer = grid_layer(table, line_width=1)
    with open_slide(path) as slide:
        dz = DeepZoom(slide, tile_size, overlap)
        bounds_x = np.unique(np.concatenate([table["x"], table["x"] + size])).astype(float)
        bounds_y = np.unique(np.concatenate([table["y"], table["y"] + size])).astype(float)
        checked = 0
        for level in range(dz.level_count - 5, dz.level_count):  # ds 16, 8, 4, 2, 1
            ds = dz.level_downsample(level)
            lw, lh = dz.level_dimensions[level]
            cols, rows = dz.level_tiles[level]
            whole = layer.render_region((0, 0, lw * ds, lh * ds), (lw, lh))
            stitched = np.zeros_like(whole)
            for col in range(cols):
                for row in range(rows):
                    spec = dz.tile_spec(level, col, row)
                    tile = dz.get_overlay_tile(layer, level, col, row)
                    zx, zy = spec.box[0] // ds, spec.box[1] // ds
                    # an overlap pixel must agree with the neighbouring tile's own pixel there
                    np.testing.assert_array_equal(tile, whole[zy:zy + tile.shape[0], zx:zx + tile.shape[1]],
                                                  err_msg=f"level {level} tile {col},{row}")
                    stitched[zy:zy + tile.shape[0], zx:zx + tile.shape[1]] = tile
            np.testing.assert_array_equal(stitched, whole)
            on_r, on_c = np.nonzero(whole[..., 3])
            assert len(on_r), f"level {level}: no outline drawn"
            # level-0 span of each outline pixel; it must touch a tile boundary (within one pixel)
            cx0, cy0 = on_c * ds, on_r * ds
            near_x = (np.abs(bounds_x[None, :] - (cx0[:, None] + ds / 2)) <= ds).any(axis=1)
            near_y = (np.abs(bounds_y[None, :] - (cy0[:, None] + ds / 2)) <= ds).any(axis=1)
            assert (near_x | near_y).all(), f"level {level} (ds {ds}): outline pixels off the tile boundaries"
            if ds <= 4:  # zoomed in: every column strictly inside a tile and away from its edges is empty
                inner = [c for c in range(lw) if all(abs(c * ds + ds / 2 - b) > 2 * ds for b in bounds_x)]
                rows_inside = [r for r in range(lh) if all(abs(r * ds + ds / 2 - b) > 2 * ds for b in bounds_y)]
                assert not whole[np.ix_(rows_inside, inner)][..., 3].any(), f"level {level}: stray outline"
            checked += 1
        assert checked == 5


def test_grid_outline_is_not_drawn_at_a_cut_region_edge():
    layer = grid_layer(grid_table(nx=1, ny=1, size=256, x0=0, y0=0))
    # a region that starts and ends inside the tile: no border of the tile is in view, nothing is drawn
    assert not layer.render_region((10, 10, 200, 200), (200, 200))[..., 3].any()
    # a region holding the tile's left edge only: one column at the left, none at the right cut
    out = layer.render_region((-20, 10, 120, 100), (120, 100))
    cols = np.nonzero(out[..., 3].any(axis=0))[0]
    assert list(cols) == [20]


def test_mask_outline_mode_draws_the_boundary_consistently_across_regions():
    m = np.zeros((40, 60), bool)
    m[10:30, 15:45] = True
    filled, outline = mask_layer(m, downsample=4), mask_layer(m, downsample=4, outline=True)
    assert filled.opacity == 0.25  # light by default: the morphology shows through
    whole = outline.render_region((0, 0, 240, 160), (240, 160))[..., 3] > 0
    inside = filled.render_region((0, 0, 240, 160), (240, 160))[..., 3] > 0
    assert whole.sum() < 0.1 * inside.sum() and (whole <= inside).all()  # a thin line on the mask's edge
    assert whole[40, 60:180].all() and not whole[50:110, 70:170].any()  # top edge drawn, interior empty
    # two halves rendered apart agree with the whole (no line at the cut)
    left = outline.render_region((0, 0, 120, 160), (120, 160))[..., 3] > 0
    right = outline.render_region((120, 0, 120, 160), (120, 160))[..., 3] > 0
    np.testing.assert_array_equal(np.hstack([left, right]), whole)
    again = type(outline).from_json(outline.to_json())
    assert again.outline and np.array_equal(again.render_region((0, 0, 240, 160), (240, 160)),
                                            outline.render_region((0, 0, 240, 160), (240, 160)))
