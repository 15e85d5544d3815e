"""The napari plugin reader opens a multi-channel fluorescence OME-TIFF as one layer per channel (issue 12):
named and coloured from the file's OME channel metadata, with the slide's contrast limits and additive
blending, in a real napari viewer on a virtual X display."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_lab.slide import open_slide
from wsi_lab.slide.display import DisplaySettings
from wsi_lab.slide.display_file import save_display_settings

from .test_napari import _settle, xdisplay  # noqa: F401  (the Xvfb fixture)
from .test_viewer_channels import make_fluorescence_ome

napari = pytest.importorskip("napari", reason="napari is not installed: pip install 'wsi-lab[napari]'")
from wsi_lab.napari import napari_get_reader  # noqa: E402


@pytest.fixture(scope="module")
def ome(tmp_path_factory):
    return make_fluorescence_ome(tmp_path_factory.mktemp("ome") / "fluo.ome.tif")


def test_reader_gives_one_named_coloured_layer_per_channel(ome):
    reader = napari_get_reader(str(ome))
    assert reader is not None
    layers = reader(str(ome))
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["fluo [DAPI]", "fluo [FITC]", "fluo [TRITC]"]
    assert [kw["colormap"] for _, kw, _ in layers] == ["blue", "green", "red"]  # from the OME Color attributes
    slide = open_slide(ome)
    raw = slide.read_region((0, 0), 0, slide.dimensions)
    for c, (data, kw, kind) in enumerate(layers):
        assert kind == "image" and not kw["rgb"] and kw["blending"] == "additive" and kw["multiscale"]
        lo, hi = kw["contrast_limits"]
        assert 0 <= lo < hi <= int(raw[..., c].max()) and lo >= int(raw[..., c].min())  # the slide's own percentiles
        assert np.array_equal(np.asarray(data[0][:64, :64]), raw[:64, :64, c])  # raw pixels, one channel


def test_reader_uses_the_recorded_display(ome, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_slide(ome) as s:
        save_display_settings(s, DisplaySettings((1,), ((255, 0, 255),), ((10.0, 50.0),), 1.5, "fluorescence"))
    (data, kw, _), = napari_get_reader(str(ome))(str(ome))
    assert kw["name"] == "fluo [FITC]" and tuple(kw["contrast_limits"]) == (10.0, 50.0) and kw["gamma"] == 1.5
    assert kw["colormap"] == "magenta"


@pytest.mark.napari
def test_napari_shows_each_channel_in_its_colour(xdisplay, ome):  # noqa: F811
    viewer = napari.Viewer(show=True)
    try:
        layers = viewer.open(str(ome), plugin="wsi-lab")
        assert [lay.name for lay in layers] == ["fluo [DAPI]", "fluo [FITC]", "fluo [TRITC]"]
        assert all(lay.blending == "additive" and not lay.rgb for lay in layers)
        img = _settle(viewer)[..., :3].astype(int)
        assert img[..., 2].max() > 150 and img[..., 1].max() > 150 and img[..., 0].max() > 150
        layers[0].visible = False  # DAPI (blue) off: the blue checkerboard goes
        img2 = _settle(viewer)[..., :3].astype(int)
        assert img2[..., 2].max() < 60 < img2[..., 1].max()
    finally:
        viewer.close()
