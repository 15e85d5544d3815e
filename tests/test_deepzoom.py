"""Deep-zoom core: geometry against OpenSlide's DeepZoomGenerator, pixels, errors, overlay placement."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_lab import open_slide
from wsi_lab.errors import InvalidParameterError
from wsi_lab.viewing import DeepZoom, LayerSnapshot, snapshot_layer

SHARED_SLIDES = Path(os.environ.get("WSI_LAB_SHARED_SLIDES", Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"))
CMU, NDPI = SHARED_SLIDES / "CMU-1-Small-Region.svs", SHARED_SLIDES / "test3-DAPI-2-387.ndpi"
pytestmark = pytest.mark.skipif(not CMU.exists(), reason="shared slides missing")

openslide = pytest.importorskip("openslide")
from openslide.deepzoom import DeepZoomGenerator  # noqa: E402


class BoxLayer:
    """Stand-in overlay layer: one opaque red level-0 box (x, y, w, h) on transparency (exact geometry)."""

    name = "box"
    opacity = 0.7

    def __init__(self, box):
        self.box = box

    def render_region(self, box, out_size):
        x, y, w, h = box
        ow, oh = out_size
        cx = x + (np.arange(ow) + 0.5) * w / ow
        cy = y + (np.arange(oh) + 0.5) * h / oh
        bx, by, bw, bh = self.box
        inside = ((cy[:, None] >= by) & (cy[:, None] < by + bh)) & ((cx[None, :] >= bx) & (cx[None, :] < bx + bw))
        out = np.zeros((oh, ow, 4), np.uint8)
        out[inside] = (255, 0, 0, 255)
        return out

    def legend(self):
        return {"type": "category", "items": [{"label": "box", "color": "#ff0000"}]}


def _layer_for_one_tile(slide, box):
    """The real heatmap of a one-row TileTable when wsi_lab.overlays is there, else the stand-in."""
    try:
        import pandas as pd

        from wsi_lab import overlays
    except ImportError:
        return BoxLayer(box)
    x, y, size, _ = box
    table = pd.DataFrame({"slide_id": [slide.slide_id], "patient_id": ["p"], "x": [x], "y": [y], "level": [0],
                          "read_size": [size], "tile_size": [size], "mpp": [0.5], "tissue_fraction": [1.0],
                          "score": [1.0]})
    return overlays.heatmap_layer(table, "score", vmin=0.0, vmax=1.0)


@pytest.mark.parametrize("path", [CMU, NDPI], ids=lambda p: p.name)
@pytest.mark.parametrize("tile_size,overlap", [(254, 1), (256, 0)])
def test_geometry_matches_openslide(path, tile_size, overlap):
    with open_slide(path) as slide:
        dz = DeepZoom(slide, tile_size, overlap)
        ref = DeepZoomGenerator(openslide.OpenSlide(str(path)), tile_size, overlap, limit_bounds=False)
        assert dz.level_count == ref.level_count
        assert dz.level_dimensions == ref.level_dimensions
        assert dz.level_tiles == ref.level_tiles
        assert dz.tile_count == ref.tile_count
        for level in range(dz.level_count):
            cols, rows = dz.level_tiles[level]
            for col, row in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
                assert dz.tile_spec(level, col, row).size == ref.get_tile_dimensions(level, (col, row))


@pytest.mark.parametrize("path", [CMU, NDPI], ids=lambda p: p.name)
def test_tile_pixels_match_openslide(path):
    with open_slide(path) as slide:
        dz = DeepZoom(slide, 254, 1)
        ref = DeepZoomGenerator(openslide.OpenSlide(str(path)), 254, 1)
        top = dz.level_count - 1
        for level in (top, top - 1, top - 3):  # (OpenSlide stretches the partial last pixel; we don't)
            cols, rows = dz.level_tiles[level]
            col, row = cols // 2, rows // 2
            ours = dz.get_tile(level, col, row).astype(np.int16)
            theirs = np.asarray(ref.get_tile(level, (col, row)).convert("RGB")).astype(np.int16)
            assert ours.shape == theirs.shape
            assert np.abs(ours - theirs).mean() < 4.0, (level, np.abs(ours - theirs).mean())
            assert ours.std() > 2  # real content, not a blank tile


def test_jpeg_bytes_and_cache(cmu_path):
    with open_slide(cmu_path) as slide:
        dz = DeepZoom(slide, 256, 0, quality=85)
        top = dz.level_count - 1
        data = dz.get_tile_bytes(top, 3, 4)
        assert data[:2] == b"\xff\xd8"
        img = Image.open(io.BytesIO(data))
        assert img.size == (256, 256) and img.mode == "RGB"
        assert dz.get_tile_bytes(top, 3, 4) is data  # served from the LRU cache
        assert dz._cache.hits == 1
        edge = dz.tile_spec(top, *[n - 1 for n in dz.level_tiles[top]])
        assert edge.size == (2220 - 8 * 256, 2967 - 11 * 256)
        assert dz.info()["mpp"] == [0.499, 0.499]
        assert 'TileSize="256"' in dz.dzi_xml() and 'Width="2220"' in dz.dzi_xml()


@pytest.mark.parametrize("bad", [(-1, 0, 0), (99, 0, 0), (13, 0, 0), (12, 999, 0), (12, 0, -1), ("12", 0, 0),
                                 (12.0, 0, 0), (True, 0, 0)])
def test_bad_coordinates_raise(cmu_path, bad):
    with open_slide(cmu_path) as slide:
        dz = DeepZoom(slide)
        assert dz.level_count == 13
        with pytest.raises(InvalidParameterError):
            dz.get_tile_bytes(*bad)


@pytest.mark.parametrize("kw", [{"tile_size": 0}, {"overlap": -1}, {"tile_size": 4, "overlap": 2}, {"quality": 0}])
def test_bad_parameters_raise(cmu_path, kw):
    with open_slide(cmu_path) as slide, pytest.raises(InvalidParameterError):
        DeepZoom(slide, **kw)


@pytest.mark.parametrize("tile_size,overlap", [(254, 1), (256, 0)])
def test_overlay_tile_lands_in_the_right_box(cmu_path, tile_size, overlap):
    """A one-tile heatmap: at several deep-zoom levels its opaque pixels sit exactly in that tile's box."""
    with open_slide(cmu_path) as slide:
        dz = DeepZoom(slide, tile_size, overlap)
        box = (1024, 1536, 512, 512)  # level-0 x, y, w, h of the one tile
        snap = snapshot_layer(_layer_for_one_tile(slide, box), slide.dimensions)
        assert snap.downsample == 1
        top = dz.level_count - 1
        for level in (top, top - 1, top - 2, top - 3):
            ds = dz.level_downsample(level)
            # expected box in deep-zoom pixels of this level
            ex0, ey0 = box[0] / ds, box[1] / ds
            ex1, ey1 = (box[0] + box[2]) / ds, (box[1] + box[3]) / ds
            seen = 0
            cols, rows = dz.level_tiles[level]
            for col in range(cols):
                for row in range(rows):
                    spec = dz.tile_spec(level, col, row)
                    rgba = dz.get_overlay_tile(snap, level, col, row)
                    ys, xs = np.nonzero(rgba[..., 3])
                    if not len(xs):
                        continue
                    # tile pixel -> level pixel
                    zx, zy = xs + spec.box[0] / ds, ys + spec.box[1] / ds
                    assert zx.min() >= math.floor(ex0) and zx.max() <= math.ceil(ex1) - 1, (level, col, row)
                    assert zy.min() >= math.floor(ey0) and zy.max() <= math.ceil(ey1) - 1, (level, col, row)
                    inner = rgba[max(0, int(ey0 - spec.box[1] / ds) + 1):max(0, int(ey1 - spec.box[1] / ds) - 1),
                                 max(0, int(ex0 - spec.box[0] / ds) + 1):max(0, int(ex1 - spec.box[0] / ds) - 1), 3]
                    assert (inner > 0).all()  # the box is filled, not just outlined
                    seen += len(xs) - _overlap_duplicates(spec, dz, xs, ys)
            area = (box[2] / ds) * (box[3] / ds)
            assert abs(seen - area) <= 2 * (box[2] + box[3]) / ds + 4, (level, seen, area)


def _overlap_duplicates(spec, dz, xs, ys):
    """Pixels of this tile that also belong to a left/top neighbour (the overlap strips)."""
    ov = dz.overlap
    left = ov if spec.col > 0 else 0
    top = ov if spec.row > 0 else 0
    return int(((xs < left) | (ys < top)).sum())


def test_snapshot_roundtrip_and_downsampled_raster(cmu_path):
    with open_slide(cmu_path) as slide:
        layer = BoxLayer((100, 200, 300, 400))
        snap = snapshot_layer(layer, slide.dimensions, max_side=1000)
        assert snap.downsample == 3 and snap.rgba.shape == (989, 740, 4)
        assert snap.name == "box" and snap.opacity == 0.7 and snap.legend["items"][0]["label"] == "box"
        back = LayerSnapshot.from_png(snap.to_png(), snap.downsample)
        assert back.key == snap.key and np.array_equal(back.rgba, snap.rgba)
        out = snap.render_region((0, 0, 600, 600), (200, 200))
        ys, xs = np.nonzero(out[..., 3])
        # within one raster pixel (3 level-0 px = 1 output px here) of the true box
        assert abs(xs.min() * 3 - 100) <= 3 and abs((xs.max() + 1) * 3 - 400) <= 3
        assert abs(ys.min() * 3 - 200) <= 3 and ys.max() == 199
        with pytest.raises(InvalidParameterError):
            LayerSnapshot.from_png(b"not a png", 1)


def test_low_levels_come_from_a_cached_level_image(cmu_path):
    """CMU has one stored level: deep-zoom levels ≥ 4x below it are cropped from one rendered level image,
    and match the tile-by-tile reads (exact area averages, ±2 for rounding twice)."""
    with open_slide(cmu_path) as slide:
        dz = DeepZoom(slide)
        direct = DeepZoom(slide)
        direct._cached_levels = frozenset()
        assert 10 in dz._cached_levels and 11 not in dz._cached_levels  # only levels reading ≥ 4x the pixels
        for level in (10, 9):
            cols, rows = dz.level_tiles[level]
            for col in range(cols - 1):
                for row in range(rows - 1):
                    a = dz.get_tile(level, col, row)
                    b = direct.get_tile(level, col, row)
                    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 2, (level, col, row)  # rounding
        assert set(dz._level_images) == {9, 10}
