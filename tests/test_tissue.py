"""Tissue detection on the real slides and on synthetic pyramidal slides."""

from __future__ import annotations

import numpy as np
import pytest

import wsi_lab
from wsi_lab.errors import InvalidParameterError, MissingMPPError, NoTissueError
from wsi_lab.tissue import TissueMask, detect_tissue, otsu_threshold


@pytest.fixture(scope="module")
def cmu(cmu_path):
    with wsi_lab.open_slide(cmu_path) as s:
        yield s


@pytest.mark.parametrize("method", ["otsu", "variance", "background"])
def test_methods_find_tissue_on_every_real_slide(slide_path, method):
    with wsi_lab.open_slide(slide_path) as s:
        m = detect_tissue(s, method)
        assert m.mask.dtype == bool and m.mask.ndim == 2
        assert 0.05 < m.fraction <= 1.0
        # exact level-0 mapping: mask covers the slide with `downsample` px per mask px
        W, H = s.dimensions
        assert m.mask.shape == (int(np.ceil(H / m.downsample)), int(np.ceil(W / m.downsample)))
        assert m.slide_dimensions == (W, H) and m.slide_path == str(slide_path)
        assert m.method == method and m.params["modality"] in ("brightfield", "fluorescence")


def test_modality_autodetect_and_override(cmu_path, ndpi_path):
    with wsi_lab.open_slide(ndpi_path) as s:
        assert detect_tissue(s, "otsu").params["modality"] == "fluorescence"
        forced = detect_tissue(s, "background", modality="brightfield")
        assert forced.params["modality"] == "brightfield"
        # in brightfield terms a black background is "not white", so nearly everything is "tissue"
        assert forced.fraction > detect_tissue(s, "background").fraction
    with wsi_lab.open_slide(cmu_path) as s:
        assert detect_tissue(s, "otsu").params["modality"] == "brightfield"


def test_background_region_is_not_tissue_and_tissue_region_is(cmu):
    m = detect_tissue(cmu, "otsu")
    # SOURCES.md: the region at (555, 741) is background (mean ~244); the bottom-right quarter is tissue
    assert m.tissue_fraction(555, 741, 256, 256) < 0.2
    w, h = cmu.dimensions
    region = cmu.read_region((0, 0), 0, (w, h)).astype(np.float32)
    sat = (region.max(2) - region.min(2))
    # the mask agrees with full-resolution saturation on most 64x64 blocks
    blocks = sat[: h // 64 * 64, : w // 64 * 64].reshape(h // 64, 64, w // 64, 64).mean(axis=(1, 3)) > 20
    ys, xs = np.mgrid[0:h // 64, 0:w // 64]
    frac = m.tissue_fraction(xs.ravel() * 64, ys.ravel() * 64, np.full(xs.size, 64), np.full(xs.size, 64))
    agree = ((frac > 0.5) == blocks.ravel()).mean()
    assert agree > 0.9


def test_tissue_fraction_exact_and_vectorised():
    mask = np.zeros((10, 20), bool)
    mask[2:6, 4:10] = True
    tm = TissueMask(mask, downsample=8.0)
    assert tm.slide_dimensions == (160, 80)
    assert tm.tissue_fraction(32, 16, 48, 32) == pytest.approx(1.0)
    assert tm.tissue_fraction(0, 0, 160, 80) == pytest.approx(mask.mean())
    # half a mask pixel in x and y: fractional coverage is exact (bilinear integral image)
    assert tm.tissue_fraction(28, 12, 8, 8) == pytest.approx(0.25)
    xs = np.arange(0, 150, 7)
    fr = tm.tissue_fraction(xs, np.full(xs.shape, 10), np.full(xs.shape, 10), np.full(xs.shape, 10))
    assert fr.shape == xs.shape
    assert np.allclose(fr, [tm.tissue_fraction(int(x), 10, 10, 10) for x in xs])
    # outside the slide counts as background
    assert tm.tissue_fraction(-100, -100, 50, 50) == 0.0
    with pytest.raises(InvalidParameterError):
        tm.tissue_fraction(0, 0, 0, 10)


def test_save_load_roundtrip_and_overlay(tmp_path, cmu):
    m = detect_tissue(cmu, "variance", threshold=50, closing=1)
    path = m.save(tmp_path / "mask.png")
    back = TissueMask.load(path)
    assert np.array_equal(back.mask, m.mask) and back.downsample == pytest.approx(m.downsample)
    assert back.params["threshold"] == 50 and back.method == "variance"
    rgba = m.to_rgba((255, 0, 0), 0.5)
    assert rgba.shape == m.mask.shape + (4,)
    assert (rgba[m.mask, 3] == 128).all() and (rgba[~m.mask, 3] == 0).all()
    assert (rgba[m.mask, 0] == 255).all()
    with pytest.raises(InvalidParameterError):
        m.save(tmp_path / "mask.jpg")


def test_thresholds_change_result_and_validation(cmu):
    low = detect_tissue(cmu, "variance", threshold=10).fraction
    high = detect_tissue(cmu, "variance", threshold=2000).fraction
    assert low > high
    for bad in ({"threshold": -1}, {"threshold": 1e9}, {"threshold": "x"}, {"nonsense": 1}, {"modality": "xray"}):
        with pytest.raises(InvalidParameterError):
            detect_tissue(cmu, "variance", **bad)
    with pytest.raises(InvalidParameterError):
        detect_tissue(cmu, "background", max_background=1.5)
    with pytest.raises(InvalidParameterError):
        detect_tissue(cmu, "watershed")
    with pytest.raises(InvalidParameterError):
        detect_tissue(cmu, "otsu", downsample=-2)


def test_no_tissue_error_names_slide_and_threshold(cmu):
    with pytest.raises(NoTissueError) as exc:
        detect_tissue(cmu, "variance", threshold=60000)
    assert "CMU-1-Small-Region" in str(exc.value) and "60000" in str(exc.value)


def test_blank_slide_raises_no_tissue(tmp_path):
    from wsi_lab.testing import make_slide

    p = make_slide(tmp_path / "blank.svs", 2048, 1536, tissue_fraction=0.0)
    for method in ("otsu", "variance", "background"):
        with pytest.raises(NoTissueError):
            detect_tissue(p, method)


def test_cleanup_min_object_and_holes(cmu, ome_path):
    base = detect_tissue(cmu, "otsu")
    cleaned = detect_tissue(cmu, "otsu", min_object_um2=50_000, min_hole_um2=50_000)
    from scipy import ndimage

    assert ndimage.label(cleaned.mask)[1] <= ndimage.label(base.mask)[1]
    sizes = np.bincount(ndimage.label(cleaned.mask)[0].ravel())[1:]
    cell_um2 = (base.downsample * cmu.mpp[0]) ** 2
    assert (sizes * cell_um2 >= 50_000 * 0.99).all()
    closed = detect_tissue(cmu, "otsu", closing=2)
    assert closed.mask.sum() >= base.mask.sum()
    with wsi_lab.open_slide(ome_path) as s:
        assert detect_tissue(s, "otsu").fraction > 0.9  # an all-tissue crop stays whole


def test_pyramid_slide_uses_low_level_and_matches_layout(tmp_path):
    from wsi_lab.testing import make_slide

    p = make_slide(tmp_path / "syn.svs", 8192, 6144, mpp=0.25, tissue_fraction=0.4, seed=3)
    with wsi_lab.open_slide(p) as s:
        m = detect_tissue(s, "otsu")
        assert m.downsample == pytest.approx(8 / 0.25)  # ~8 µm per mask pixel
        # every synthetic level-0 tile is either tissue or white: compare per 256 tile
        t = 256
        ys, xs = np.mgrid[0:6144 // t, 0:8192 // t]
        frac = m.tissue_fraction(xs.ravel() * t, ys.ravel() * t, np.full(xs.size, t), np.full(xs.size, t))
        thumb = s.read_region((0, 0), 2, (8192 // 16, 6144 // 16)).astype(np.float32)
        blk = thumb.reshape(6144 // t, 16, 8192 // t, 16, 3).min(axis=(1, 3, 4)) < 200
        assert ((frac > 0.5) == blk.ravel()).mean() > 0.9


def test_otsu_threshold_bimodal():
    v = np.concatenate([np.full(1000, 10.0), np.full(500, 200.0)])
    assert 10 < otsu_threshold(v) < 200


def test_min_size_um2_without_mpp_raises(tmp_path):
    from wsi_lab.testing import make_slide

    p = make_slide(tmp_path / "nompp.svs", 2048, 1536, mpp=None, tissue_fraction=0.5)
    with wsi_lab.open_slide(p) as s:
        assert detect_tissue(s, "otsu").fraction > 0
        with pytest.raises(MissingMPPError):
            detect_tissue(s, "otsu", min_object_um2=100)


def test_method_table_is_the_one_source_of_names_and_defaults():
    from wsi_lab.errors import InvalidParameterError
    from wsi_lab.tiling import TilingParams, TwoStage
    from wsi_lab.tiling.twostage import default_threshold
    from wsi_lab.tissue import DEFAULTS, METHODS, TISSUE_METHODS, default_background_threshold, threshold_params

    assert METHODS == tuple(TISSUE_METHODS) == ("otsu", "variance", "background")
    for name, spec in TISSUE_METHODS.items():
        assert DEFAULTS[name][spec.threshold_param] == spec.default_threshold
        assert threshold_params(name, 7.0) == {spec.threshold_param: 7.0}
        TilingParams(method=name).validate()
        TwoStage(coarse=256, fine=64, coarse_method=name).validate()
    assert threshold_params("otsu", None) == {} and threshold_params(None, 3.0) == {}
    with pytest.raises(InvalidParameterError, match="choose one of otsu, variance, background"):
        threshold_params("nope", 1.0)
    with pytest.raises(InvalidParameterError):
        TilingParams(method="nope").validate()
    for modality in ("brightfield", "fluorescence"):
        assert default_threshold("background", modality) == default_background_threshold(modality)
    pytest.importorskip("ipywidgets")
    from wsi_lab.ui.tuner import THRESHOLDS

    assert THRESHOLDS == {name: spec.slider() for name, spec in TISSUE_METHODS.items()}


def test_threshold_ranges_come_from_the_table(tmp_path):
    from wsi_lab.errors import InvalidParameterError
    from wsi_lab.testing import make_slide
    from wsi_lab.tissue import TISSUE_METHODS

    slide = make_slide(tmp_path / "s.svs", 1024, 1024, source="procedural")
    for name, spec in TISSUE_METHODS.items():
        with pytest.raises(InvalidParameterError, match=spec.threshold_param):
            detect_tissue(slide, name, **{spec.threshold_param: spec.valid_max + 1})
