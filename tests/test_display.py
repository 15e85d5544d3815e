"""Fluorescence a person can see (issue 12): display settings from the slide's own statistics, applied on
every display path (thumbnail, browser, deep zoom, napari) while the raw pixels stay untouched."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from wsi_lab.errors import InvalidParameterError
from wsi_lab.slide import open_slide
from wsi_lab.slide.display import DisplaySettings, apply_display, auto_display, settings_from_pixels
from wsi_lab.testing_stains import write_variant_slide

from .conftest import SHARED_SLIDES

DAPI = SHARED_SLIDES / "test3-DAPI-2-387.ndpi"


def _lum(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _span(rgb: np.ndarray) -> float:
    lo, hi = np.percentile(_lum(rgb), [1, 99])
    return float(hi - lo)


@pytest.fixture(scope="module")
def dim_fluo(tmp_path_factory):
    """A TRITC-like scan: red signal 3..14 out of 255 in blobs, green autofluorescence 1..6, black glass."""
    rng = np.random.default_rng(0)
    h, w = 768, 1024
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((xx - 500) / 260.0) ** 2 + ((yy - 380) / 200.0) ** 2))
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0] = 1 + 13 * blob * (0.7 + 0.3 * rng.random((h, w)))
    img[..., 1] = 1 + 5 * blob
    img = np.clip(np.rint(img + rng.normal(0, 0.4, img.shape)), 0, 255).astype(np.uint8)
    return write_variant_slide(tmp_path_factory.mktemp("fluo") / "tritc.svs", img, 0.5, quality=95)


def test_dim_fluorescence_thumbnail_becomes_visible_and_raw_stays(dim_fluo):
    with open_slide(dim_fluo) as s:
        raw = s.get_thumbnail(512)
        region = s.read_region((0, 0), 0, (256, 256)).copy()
        shown = s.get_thumbnail(512, display="auto")
        assert np.array_equal(s.get_thumbnail(512), raw)  # raw default untouched
        assert np.array_equal(s.read_region((0, 0), 0, (256, 256)), region)
        settings = auto_display(s)
    assert settings.modality == "fluorescence" and settings.channels == (0, 1)
    assert settings.colors == ((255, 0, 0), (0, 255, 0))
    assert _span(raw) < 20 and _span(shown) > 150
    assert settings.limits[0][1] < 20  # from the slide's own statistics, not 0..255


def test_dapi_thumbnail_has_a_visible_dynamic_range():
    if not DAPI.is_file():
        pytest.skip("shared slides not found")
    with open_slide(DAPI) as s:
        raw = s.get_thumbnail(1024)
        shown = s.get_thumbnail(1024, display="auto")
        settings = auto_display(s)
    assert settings.modality == "fluorescence" and settings.channels == (2,)  # DAPI: only blue has signal
    lo, hi = np.percentile(_lum(shown), [1, 99])
    assert hi - lo >= 0.75 * 255, (lo, hi)  # 1st-99th percentile span covers most of 0-255
    assert _span(raw) < 60  # blue on black is dark to the eye: what a person saw before


def test_brightfield_is_shown_as_scanned(cmu_path):
    with open_slide(cmu_path) as s:
        assert auto_display(s).identity
        assert np.array_equal(s.get_thumbnail(300, display="auto"), s.get_thumbnail(300))


def test_apply_display_rule():
    px = np.array([[[10, 0, 200], [60, 0, 100]]], np.uint8)
    s = DisplaySettings((0, 2), ((255, 0, 0), (0, 255, 0)), ((10.0, 60.0), (100.0, 200.0)), 1.0, "fluorescence")
    out = apply_display(px, s)
    assert out.tolist() == [[[0, 255, 0], [255, 0, 0]]]
    mid = np.array([[[35, 0, 0]]], np.uint8)
    dark, bright = (apply_display(mid, s.with_gamma(g))[0, 0, 0] for g in (2.0, 0.5))
    assert dark < 128 < bright  # gamma: ((v - lo) / (hi - lo)) ** gamma
    one = settings_from_pixels(np.stack([np.arange(256, dtype=np.uint16).reshape(16, 16) * 16] * 1, axis=2))
    assert one.colors == ((255, 255, 255),) and one.limits[0][1] > 255  # any dtype, a gray channel
    assert DisplaySettings.from_dict(s.to_dict()) == s  # recorded with a session
    for bad in (dict(gamma=0), dict(limits=((5.0, 5.0), (0.0, 1.0))), dict(channels=(0,))):
        with pytest.raises(InvalidParameterError):
            DisplaySettings(**{**dict(channels=(0, 2), colors=s.colors, limits=s.limits), **bad})
    with pytest.raises(InvalidParameterError):
        apply_display(px[..., :1], s)


def test_deepzoom_and_browser_show_the_display(dim_fluo):
    from wsi_lab.viewing.deepzoom import DeepZoom

    with open_slide(dim_fluo) as s:
        raw = DeepZoom(s)
        shown = DeepZoom(s, display="auto")
        lvl = shown.level_count - 3
        assert np.array_equal(shown.get_tile(lvl, 0, 0), raw.get_tile(lvl, 0, 0))  # pixels stay raw
        a = np.asarray(Image.open(io.BytesIO(raw.get_tile_bytes(lvl, 0, 0))).convert("RGB"))
        b = np.asarray(Image.open(io.BytesIO(shown.get_tile_bytes(lvl, 0, 0))).convert("RGB"))
        assert _span(a) < 20 and _span(b) > 100
        shown.set_display(None)  # back to raw: the encoded-tile cache is not reused
        c = np.asarray(Image.open(io.BytesIO(shown.get_tile_bytes(lvl, 0, 0))).convert("RGB"))
        assert _span(c) < 20
    pytest.importorskip("ipywidgets")
    from wsi_lab.ui.browser import thumbnail_bytes

    thumb = np.asarray(Image.open(io.BytesIO(thumbnail_bytes(dim_fluo, 192))).convert("RGB"))
    assert _span(thumb) > 150


def test_napari_gets_a_layer_per_channel(dim_fluo, cmu_path):
    pytest.importorskip("napari")
    from wsi_lab.napari._display import display_layers_data

    with open_slide(dim_fluo) as s:
        layers = display_layers_data(s)
        limits = auto_display(s).limits
    assert [kw["colormap"] for _, kw, _ in layers] == ["red", "green"]
    assert [kw["contrast_limits"] for _, kw, _ in layers] == list(limits)
    assert all(not kw["rgb"] and kw["blending"] == "additive" for _, kw, _ in layers)
    assert layers[0][0][0].shape == s.level_dimensions[0][::-1]  # one channel per layer, full pyramid
    with open_slide(cmu_path) as s:
        (single,) = display_layers_data(s)
    assert single[1]["rgb"] is True


def test_deepzoom_info_records_the_display(dim_fluo, cmu_path):
    import json

    from wsi_lab.viewing.deepzoom import DeepZoom

    with open_slide(dim_fluo) as s:
        info = DeepZoom(s, display="auto").info()
        assert DisplaySettings.from_dict(json.loads(json.dumps(info["display"]))) == auto_display(s)
        assert DeepZoom(s).info()["display"] is None
    with open_slide(cmu_path) as s:
        assert DeepZoom(s, display="auto").info()["display"]["modality"] == "brightfield"
