"""wsi_lab.testing: the synthetic slide writer and the corrupt copies other areas' tests reuse."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tifffile

from wsi_lab import open_slide
from wsi_lab.errors import InvalidParameterError
from wsi_lab.testing import make_corrupt_copies, make_slide, plain_tiff


def _shrink(arr: np.ndarray, f: int) -> np.ndarray:
    h, w = arr.shape[0] // f * f, arr.shape[1] // f * f
    return arr[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))


def test_layout_levels_tiles_and_aperio_description(tmp_path):
    p = make_slide(tmp_path / "a.svs", 5000, 3000, tile=256, mpp=0.5, magnification=20, seed=3)
    with tifffile.TiffFile(p) as tf:
        pages = list(tf.pages)
        tiled = [pg for pg in pages if pg.is_tiled]
        assert [pg.shape[:2] for pg in tiled] == [(3000, 5000), (750, 1250), (187, 312), (46, 78)]
        assert all(pg.tilewidth == pg.tilelength == 256 and pg.compression == 7 for pg in tiled)
        assert not tf.pages[0].subifds  # one top-level IFD per level (cuCIM does not see SubIFDs)
        d0 = pages[0].description
        assert d0.startswith("Aperio Image Library") and "5000x3000 (256x256)" in d0
        assert "MPP = 0.5" in d0 and "AppMag = 20" in d0
        assert not pages[1].is_tiled  # the Aperio thumbnail comes second
        assert any("label" in pg.description for pg in pages) and any("macro" in pg.description for pg in pages)


def test_levels_argument_and_single_tile_slide(tmp_path):
    p = make_slide(tmp_path / "two.svs", 2000, 1000, levels=2, associated=False)
    with open_slide(p, backend="tifffile") as s:
        assert s.level_dimensions == ((2000, 1000), (500, 250))
        assert "label" not in s.associated_images and "macro" not in s.associated_images
    p = make_slide(tmp_path / "tiny.svs", 100, 80)
    with open_slide(p) as s:
        assert s.level_count == 1 and s.dimensions == (100, 80)


def test_no_mpp_no_magnification(tmp_path):
    p = make_slide(tmp_path / "n.svs", 1200, 900, mpp=None, magnification=None)
    desc = tifffile.TiffFile(p).pages[0].description
    assert "MPP" not in desc and "AppMag" not in desc
    with open_slide(p) as s:
        assert s.mpp is None and s.magnification is None


def test_lower_levels_look_like_downsampled_level0(tmp_path):
    p = make_slide(tmp_path / "d.svs", 4096, 4096, tissue_fraction=0.9, seed=5)
    with open_slide(p, backend="tifffile") as s:
        full = s.read_region((1024, 1024), 0, (1024, 1024)).astype(float)
        l1 = s.read_region((1024, 1024), 1, (256, 256)).astype(float)
        l2 = s.read_region((1024, 1024), 2, (64, 64)).astype(float)
    assert full.std() > 10  # there is texture to compare
    # compared on 4x4 blocks: JPEG q80 alone moves single pixels of this texture by ~7 levels
    assert np.abs(_shrink(full, 16) - _shrink(l1, 4)).mean() < 3
    assert np.abs(_shrink(full, 64) - _shrink(l2, 4)).mean() < 3


def test_tissue_fraction_and_white_background(tmp_path):
    p = make_slide(tmp_path / "f.svs", 256 * 40, 256 * 30, tissue_fraction=0.4, seed=1)
    with tifffile.TiffFile(p) as tf:
        counts = np.asarray(tf.pages[0].databytecounts)
    white = counts == np.bincount(counts).argmax()  # the (shared) white tile is the most frequent size
    assert 0.3 < 1 - white.mean() < 0.5
    with open_slide(p) as s:
        idx = int(np.flatnonzero(white)[0])
        tile = s.read_region(((idx % 40) * 256, (idx // 40) * 256), 0, (256, 256))
        assert tile.min() >= 250


def test_deterministic_and_procedural_source(tmp_path):
    a = make_slide(tmp_path / "a.svs", 3000, 2000, seed=7, source="procedural")
    b = make_slide(tmp_path / "b.svs", 3000, 2000, seed=7, source="procedural")
    c = make_slide(tmp_path / "c.svs", 3000, 2000, seed=8, source="procedural")
    digest = [hashlib.sha256(x.read_bytes()).hexdigest() for x in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]
    with open_slide(a) as s:
        thumb = s.get_thumbnail(256)
    assert thumb.min() < 200 and thumb.max() >= 250  # tissue and background


def test_real_source_tiles_are_used(tmp_path, cmu_path):
    p = make_slide(tmp_path / "r.svs", 2048, 2048, source=cmu_path, tissue_fraction=1.0)
    with open_slide(p) as s, open_slide(cmu_path) as ref:
        got = s.read_region((0, 0), 0, (256, 256)).astype(float)
        # each pool tile is a 256x256 cut of the source on its own tile grid
        cuts = [ref.read_region((x, y), 0, (256, 256)).astype(float)
                for y in range(0, 2967 - 255, 256) for x in range(0, 2220 - 255, 256)]
    diffs = sorted(np.abs(c - got).mean() for c in cuts)
    assert diffs[0] < 10 < 3 * diffs[0] < diffs[len(diffs) // 2]  # one cut matches (up to re-encoding), others don't


@pytest.mark.parametrize("kwargs", [dict(width=0, height=10), dict(width=10, height=10, tile=100),
                                    dict(width=10, height=10, levels=0)])
def test_invalid_arguments(tmp_path, kwargs):
    with pytest.raises(InvalidParameterError):
        make_slide(tmp_path / "x.svs", **kwargs)
    assert not (tmp_path / "x.svs").exists()


def test_corrupt_copies(tmp_path, cmu_path):
    c = make_corrupt_copies(cmu_path, tmp_path)
    assert {"empty", "text", "truncated", "corrupt", "png", "png_as_tif", "directory", "missing"} <= set(c)
    assert c["empty"].stat().st_size == 0
    assert c["truncated"].stat().st_size == int(cmu_path.stat().st_size * 0.6)
    assert c["corrupt"].stat().st_size == cmu_path.stat().st_size
    assert c["corrupt"].read_bytes() != cmu_path.read_bytes()
    assert c["png_as_tif"].read_bytes()[:4] == b"\x89PNG"
    assert "truncated_tiles" not in c  # CMU keeps its directories after the tiles


def test_truncated_tiles_copy(tmp_path):
    src = make_slide(tmp_path / "s.svs", 2000, 1500)
    c = make_corrupt_copies(src, tmp_path / "bad")
    with tifffile.TiffFile(c["truncated_tiles"]) as tf:
        assert len(tf.pages) == 1 and tf.pages[0].shape[:2] == (1500, 2000)
        page = tf.pages[0]
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
    size = c["truncated_tiles"].stat().st_size
    assert 0 < sum(e > size for e in ends) < len(ends)
    assert c["directory"].is_dir() and not c["missing"].exists()


def test_plain_tiff_has_72_dpi(tmp_path):
    p = plain_tiff(tmp_path / "dpi.tif")
    with tifffile.TiffFile(p) as tf:
        assert tf.pages[0].resolution == (72.0, 72.0)
