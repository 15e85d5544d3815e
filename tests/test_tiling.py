"""Grid planning, two-stage filtering (in-process) and tiling parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

import wsi_lab
from wsi_lab.data.tile_reader import read_tile
from wsi_lab.errors import InvalidParameterError, MissingMPPError
from wsi_lab.tiling import TilingParams, TwoStage, apply_fine_pass, compare_tile_sets, plan_tiles
from wsi_lab.tissue import TissueMask


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    from wsi_lab.testing import make_slide

    return make_slide(tmp_path_factory.mktemp("syn") / "TCGA-AB-1234-01Z-00-DX1.svs", 8192, 6144, mpp=0.25,
                      tissue_fraction=0.4, seed=1)


@pytest.fixture(scope="module")
def nompp(tmp_path_factory):
    from wsi_lab.testing import make_slide

    return make_slide(tmp_path_factory.mktemp("nompp") / "nompp.svs", 4096, 3072, mpp=None, tissue_fraction=0.5)


def test_grid_on_real_slide_by_mpp(cmu_path):
    t = plan_tiles(cmu_path, tile_size=256, mpp=0.5)
    W, H = 2220, 2967
    assert list(t.columns) == ["slide_id", "patient_id", "x", "y", "level", "read_size", "tile_size", "mpp",
                               "tissue_fraction"]
    assert (t.slide_id == "CMU-1-Small-Region").all() and (t.patient_id == "CMU-1-Small-Region").all()
    rs = round(256 * 0.5 / 0.499)
    assert (t.read_size == rs).all() and (t.tile_size == 256).all() and (t.level == 0).all() and (t.mpp == 0.5).all()
    nx, ny = (W - rs) // rs + 1, (H - rs) // rs + 1
    assert len(t) == nx * ny == t.attrs["wsi_lab"]["grid_tiles"]
    assert (t.x + rs <= W).all() and (t.y + rs <= H).all() and t.x.min() == 0 and t.y.min() == 0
    assert t.tissue_fraction.isna().all()  # mask=None keeps everything
    # row-major order, unique positions
    assert not t.duplicated(["x", "y"]).any()
    assert np.all(np.diff(t.y.to_numpy() * 10**6 + t.x.to_numpy()) > 0)


def test_pyramid_levels_and_read_size(pyramid):
    with wsi_lab.open_slide(pyramid) as s:
        t1 = plan_tiles(s, 256, mpp=1.0)
        assert (t1.level == 1).all() and (t1.read_size == 256).all()
        t2 = plan_tiles(s, 256, mpp=2.0)
        assert (t2.level == 1).all() and (t2.read_size == 512).all() and (t2.mpp == 2.0).all()
        # a tile covers tile_size * mpp / base level-0 px; the grid step matches it
        assert np.diff(np.sort(t2.x.unique()))[0] == 2048
        tile = read_tile(s, *t2.iloc[0][["x", "y", "level", "read_size", "tile_size"]])
        assert tile.shape == (256, 256, 3)
        ref = s.read_at_mpp((int(t2.x.iloc[0]), int(t2.y.iloc[0])), (256, 256), 2.0)
        assert np.abs(tile.astype(int) - ref).mean() < 2
        tl = plan_tiles(s, 256, level=2)
        assert (tl.level == 2).all() and tl.mpp.iloc[0] == pytest.approx(0.25 * s.level_downsamples[2])
        assert t1.patient_id.iloc[0] == "TCGA-AB-1234"
        assert (plan_tiles(s, 512, mpp=0.5, patient_id="P7").patient_id == "P7").all()


def test_overlap(pyramid):
    t = plan_tiles(pyramid, 256, mpp=0.25, overlap=64)
    xs = np.sort(t.x.unique())
    assert (np.diff(xs) == 192).all()
    assert xs[-1] + 256 <= 8192 < xs[-1] + 192 + 256


def test_mask_filter(pyramid):
    with wsi_lab.open_slide(pyramid) as s:
        m = wsi_lab.detect_tissue(s, "otsu")
        t = plan_tiles(s, 256, mpp=0.5, mask=m, min_tissue=0.5)
        allt = plan_tiles(s, 256, mpp=0.5)
        assert 0 < len(t) < len(allt)
        assert (t.tissue_fraction >= 0.5).all()
        ext = 512  # level-0 px covered by a 256 px tile at 0.5 µm/px on a 0.25 µm/px slide
        assert np.allclose(t.tissue_fraction, m.tissue_fraction(t.x, t.y, np.full(len(t), ext), np.full(len(t), ext)),
                           atol=1e-6)
        by_name = plan_tiles(s, 256, mpp=0.5, mask="otsu", min_tissue=0.5)
        assert len(by_name) == len(t)
        assert len(plan_tiles(s, 256, mpp=0.5, mask=m, min_tissue=0.0)) == len(allt)
        assert len(plan_tiles(s, 256, mpp=0.5, mask=m, min_tissue=1.0)) <= len(t)
        other = TissueMask(np.ones((10, 10), bool), 10.0)
        with pytest.raises(InvalidParameterError, match="mask was made"):
            plan_tiles(s, 256, mpp=0.5, mask=other)


@pytest.mark.parametrize("kw", [dict(tile_size=0), dict(tile_size=-5), dict(tile_size=16385), dict(tile_size=2.5),
                                dict(tile_size=4096, mpp=0.5), dict(overlap=256), dict(overlap=-1),
                                dict(min_tissue=1.5), dict(mpp=-1.0), dict(level=9), dict(mpp=50.0, tile_size=4096)])
def test_impossible_parameters(kw, cmu_path):
    kw = {"mpp": 0.5, **kw} if "level" not in kw else kw
    with pytest.raises(InvalidParameterError):
        plan_tiles(cmu_path, **kw)


def test_missing_mpp(nompp):
    with pytest.raises(MissingMPPError, match="mpp"):
        plan_tiles(nompp, 256)
    with pytest.raises(MissingMPPError):
        plan_tiles(nompp, 256, mpp=0.5)
    t = plan_tiles(nompp, 256, level=0)
    assert len(t) and t.mpp.isna().all()
    t2 = plan_tiles(nompp, 256, mpp=0.5, slide_mpp=0.25)
    assert (t2.read_size == 512).all() and (t2.mpp == 0.5).all()


def _variance_fraction(tile, fine=64, threshold=120.0):
    n = tile.shape[0] // fine
    b = tile.reshape(n, fine, n, fine, 3).transpose(0, 2, 1, 3, 4).reshape(n, n, -1).astype(np.float64)
    return (b.var(axis=2) > threshold).mean()


def test_two_stage_fine_pass_matches_direct_computation(cmu_path):
    ts = TwoStage(256, 64)
    with wsi_lab.open_slide(cmu_path) as s:
        cand = plan_tiles(s, 256, mpp=0.5, two_stage=ts, min_tissue=0.5)
        assert cand.attrs["wsi_lab"]["stage"] == "coarse" and len(cand)
        kept = apply_fine_pass(s, cand)
        assert 0 < len(kept) <= len(cand)
        assert kept.attrs["wsi_lab"]["stage"] == "fine"
        assert set(np.round(kept.tissue_fraction * 16, 4)) <= set(range(17))
        assert (kept.tissue_fraction >= 0.5).all()
        dropped = cand.merge(kept[["x", "y"]], on=["x", "y"], how="left", indicator=True)
        dropped = dropped[dropped._merge == "left_only"]
        for _, row in list(kept.head(3).iterrows()) + list(dropped.head(3).iterrows()):
            tile = read_tile(s, row.x, row.y, row.level, row.read_size, row.tile_size)
            f = _variance_fraction(tile)
            assert (f >= 0.5) == (row.name in kept.index and "_merge" not in row)
        # compare with the mask route: overlapping, not identical
        mask_route = plan_tiles(s, 256, mpp=0.5, mask="otsu", min_tissue=0.5)
        c = compare_tile_sets(kept, mask_route, universe=cand.attrs["wsi_lab"]["grid_tiles"])
        assert c["both"] > 0 and 0.3 < c["iou"] <= 1 and 0 < c["agreement"] <= 1
        assert c["n_a"] == len(kept) and c["only_a"] + c["both"] == len(kept)


def test_two_stage_pixels_coarse_and_fluorescence(ndpi_path):
    with wsi_lab.open_slide(ndpi_path) as s:
        ts = TwoStage(256, 64, coarse_source="pixels", coarse_method="brightness", fine_method="brightness")
        cand = plan_tiles(s, 256, mpp=1.0, two_stage=ts)
        assert len(cand) == cand.attrs["wsi_lab"]["grid_tiles"]  # coarse on pixels: every grid tile is a candidate
        kept = apply_fine_pass(s, cand, min_tissue=0.25)
        assert kept.attrs["wsi_lab"]["fine_modality"] == "fluorescence"
        assert 0 < len(kept) < len(cand)


def test_compare_tile_sets_counts():
    import pandas as pd

    a = pd.DataFrame({"slide_id": ["s"] * 3, "x": [0, 1, 2], "y": [0, 0, 0]})
    b = pd.DataFrame({"slide_id": ["s"] * 2, "x": [1, 5], "y": [0, 0]})
    c = compare_tile_sets(a, b, universe=10)
    assert c == {"n_a": 3, "n_b": 2, "both": 1, "only_a": 2, "only_b": 1, "iou": 0.25, "dice": 0.4,
                 "agreement": 0.7}


def test_params_json_roundtrip_and_validation():
    p = TilingParams(tile_size=256, mpp=0.5, method="variance", method_params={"threshold": 90},
                     two_stage=TwoStage(256, 64, fine_threshold=200.0), slide_mpp=0.25)
    back = TilingParams.from_json(p.to_json())
    assert back == p and isinstance(back.two_stage, TwoStage)
    assert TwoStage.parse("512:128").fine == 128
    for bad in ("256", "a:b", "256:100", "0:0"):
        with pytest.raises(InvalidParameterError):
            TwoStage.parse(bad)
    with pytest.raises(InvalidParameterError, match="unknown"):
        TilingParams.from_dict({"tile_size": 256, "colour": "red"})
    with pytest.raises(InvalidParameterError):
        TilingParams.from_json("[1, 2]")
    for bad in (dict(tile_size=0), dict(tile_size=20000), dict(min_tissue=-0.1), dict(method="magic"),
                dict(jpeg_quality=0), dict(two_stage=TwoStage(512, 64))):
        with pytest.raises(InvalidParameterError):
            TilingParams(**bad).validate()
    assert math.isfinite(TilingParams().min_tissue)


def test_non_integer_downsample_tiles_sit_on_level_pixels(tmp_path):
    """Real pyramids have downsamples like 4.0033 (1537 / 384): every tile must read from a whole
    multiple of read_size level pixels, not one level pixel early (regression)."""
    from tests._slide_variants import svs

    v = svs(tmp_path / "odd.svs", "zlib", size=(1537, 1025), levels=2)
    with wsi_lab.open_slide(v.path, backend="tifffile") as s:
        ds = s.level_downsamples[1]
        assert ds != int(ds)
        t = plan_tiles(s, 64, mpp=2.0)
        assert (t.level == 1).all() and (t.read_size == 64).all()
        lx = np.floor(t.x.to_numpy() / ds).astype(int)
        ly = np.floor(t.y.to_numpy() / ds).astype(int)
        assert set(lx % 64) == {0} and set(ly % 64) == {0}
        assert sorted(set(lx)) == list(range(0, 384 - 63, 64)) and sorted(set(ly)) == [0, 64, 128, 192]
        row = t.iloc[len(t) - 1]  # the bottom-right tile ends exactly on the level's border
        tile = read_tile(s, row.x, row.y, row.level, row.read_size, row.tile_size)
        np.testing.assert_array_equal(tile, v.levels[1][ly[-1]:ly[-1] + 64, lx[-1]:lx[-1] + 64])


def test_mpp_finer_than_native_is_bounded(pyramid):
    """Up to 2x upsampling is allowed (and logged); finer targets are refused with the native µm/px."""
    t = plan_tiles(pyramid, 256, mpp=0.125)
    assert (t.read_size == 128).all() and (t.level == 0).all() and (t.mpp == 0.125).all()
    with pytest.raises(InvalidParameterError, match=r"finer than the slide's native 0.25 µm/px.*mpp ≥ 0.125"):
        plan_tiles(pyramid, 256, mpp=0.05)


def test_overrides_file_roundtrip_feeds_run_tiling(tmp_path):
    """The per-slide overrides the tuner saves are a core file format with a loader (was widget-only)."""
    from wsi_lab.tiling.params import load_overrides, save_override

    f = save_override(tmp_path / "ov.json", "a", TilingParams(tile_size=128, mpp=0.5))
    save_override(f, "b", TilingParams(method="variance", method_params={"threshold": 90.0}))
    ov = load_overrides(f)
    assert set(ov) == {"a", "b"} and ov["a"].tile_size == 128 and ov["b"].method_params == {"threshold": 90.0}
    (tmp_path / "bad.json").write_text('{"a": {"tile_size": -1}}')
    with pytest.raises(InvalidParameterError, match="tile_size"):
        load_overrides(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InvalidParameterError, match="JSON object"):
        load_overrides(tmp_path / "list.json")
    with pytest.raises(InvalidParameterError, match="no such"):
        load_overrides(tmp_path / "missing.json")
