"""napari integration: lazy pyramid, overlay alignment, npe2 reader, and a real viewer on a virtual X display."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from wsi_lab import open_slide
from wsi_lab.errors import InvalidParameterError, MissingDependencyError
from wsi_lab.overlays import colormap_lut, heatmap_layer

from .conftest import REPO

napari = pytest.importorskip("napari", reason="napari is not installed: pip install 'wsi-lab[napari]'")
from wsi_lab.napari import layer_data, napari_get_reader, open_in_napari, read_slides, slide_pyramid  # noqa: E402

YELLOW = tuple(colormap_lut("viridis")[255])



def _camera(viewer):
    """``viewer.scene.camera`` (napari >= 0.9; ``viewer.camera`` is deprecated there) or the old attribute."""
    camera = getattr(getattr(viewer, "scene", None), "camera", None)
    return camera if camera is not None else viewer.camera

def tile_table(slide, step=256, min_x=0):
    W, H = slide.dimensions
    xs, ys = np.meshgrid(np.arange(W // step) * step, np.arange(H // step) * step)
    t = pd.DataFrame({"slide_id": slide.slide_id, "patient_id": "p", "x": xs.ravel(), "y": ys.ravel(),
                      "level": 0, "read_size": step, "tile_size": step, "mpp": 0.5, "tissue_fraction": 1.0})
    return t[t.x >= min_x].reset_index(drop=True)


# -- no display needed --------------------------------------------------------------------------
def test_pyramid_is_lazy_and_matches_read_region(slide_path):
    slide = open_slide(slide_path)
    calls = []
    real = slide.read_region
    slide.read_region = lambda *a, **k: calls.append(a) or real(*a, **k)
    levels = slide_pyramid(slide, chunk=512)
    assert calls == []  # nothing read until asked
    assert levels[0].shape == (slide.dimensions[1], slide.dimensions[0], 3) and levels[0].dtype == np.uint8
    shapes = [lv.shape[:2] for lv in levels]
    assert all(a[0] > b[0] and a[1] > b[1] for a, b in zip(shapes, shapes[1:]))
    assert max(shapes[-1]) <= 1024
    lv = min(1, slide.level_count - 1)
    ds = slide.level_downsamples[lv]
    block = levels[lv][512:1024, 0:512].compute()
    assert len(calls) == 1
    assert np.array_equal(block, real((0, int(round(512 * ds))), lv, block.shape[1::-1]))


def test_overlay_image_is_aligned_in_world_coordinates(cmu_path):
    slide = open_slide(cmu_path)
    t = tile_table(slide)
    t["score"] = 0.0
    k = 17
    t.loc[k, "score"] = 1.0
    scale = (0.5, 0.25)  # anisotropic on purpose
    data, kw, kind = layer_data(heatmap_layer(t, "score", slide=slide), slide.dimensions, scale, "um")
    assert kind == "image" and kw["metadata"]["legend"]["column"] == "score"
    rows, cols = np.nonzero((data[..., :3] == YELLOW).all(-1) & (data[..., 3] > 0))
    # napari: world = translate + index * scale; level-0 pixel k is centred at world k * scale
    wy = kw["translate"][0] + rows * kw["scale"][0]
    wx = kw["translate"][1] + cols * kw["scale"][1]
    l0y, l0x = wy / scale[0], wx / scale[1]
    x, y = t.loc[k, "x"], t.loc[k, "y"]
    assert len(rows) and l0x.min() >= x - 0.5 and l0x.max() <= x + 255.5
    assert l0y.min() >= y - 0.5 and l0y.max() <= y + 255.5
    assert np.isclose(l0x.min() - kw["metadata"]["downsample"] / 2 + 0.5, x)  # first pixel's left edge


def test_npe2_reader_is_discovered_and_packaged(cmu_path, ndpi_path):
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "wsi-lab" in [r.plugin_name for r in pm.iter_compatible_readers([str(cmu_path)])]
    assert "wsi-lab" in [r.plugin_name for r in pm.iter_compatible_readers([str(ndpi_path)])]
    manifest = npe2.PluginManifest.from_distribution("wsi-lab")
    patterns = manifest.contributions.readers[0].filename_patterns
    assert {"*.svs", "*.tif", "*.tiff", "*.ndpi", "*.mrxs", "*.scn", "*.bif"} <= set(patterns)
    yaml = REPO / "wsi_lab" / "napari" / "napari.yaml"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(yaml)], cwd=REPO).returncode == 0
    assert yaml.is_file() and not ignored  # inside the package dir: hatch ships it in the wheel


def test_reader_returns_lazy_scaled_layers(slide_path, tmp_path):
    reader = napari_get_reader(str(slide_path))
    if slide_path.suffix.lower() not in (".svs", ".tif", ".tiff", ".ndpi"):
        pytest.skip("not a reader extension")
    assert reader is not None
    (data, kwargs, kind), = reader(str(slide_path))
    slide = open_slide(slide_path)
    assert kind == "image" and kwargs["multiscale"]
    fluo = "DAPI" in slide_path.name  # fluorescence: one layer per channel (here one: the blue DAPI channel)
    assert kwargs["rgb"] is not fluo
    shape = (slide.dimensions[1], slide.dimensions[0]) + (() if fluo else (3,))
    assert data[0].shape == shape and type(data[0]).__name__ == "Array"
    assert kwargs["scale"] == pytest.approx((slide.mpp[1], slide.mpp[0])) and kwargs["units"] == "um"
    # files it must decline
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "fake.svs").write_text("not a slide")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "fake.svs")) is None
    assert napari_get_reader(str(tmp_path / "missing.ndpi")) is None
    assert len(read_slides([str(slide_path), str(slide_path)])) == 2


def test_missing_napari_raises_with_install_hint(monkeypatch, cmu_path):
    monkeypatch.setitem(sys.modules, "napari", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'wsi-lab\[napari\]'"):
        open_in_napari(cmu_path)


def test_unknown_overlay_names_are_typed_errors(cmu_path):
    from wsi_lab.napari import resolve_overlays

    t = tile_table(open_slide(cmu_path))
    with pytest.raises(InvalidParameterError, match="needs table"):
        resolve_overlays(["score"])
    with pytest.raises(InvalidParameterError, match="no column 'nope'"):
        resolve_overlays(["nope"], table=t)
    with pytest.raises(InvalidParameterError, match="needs mask"):
        resolve_overlays(["tissue"], table=t)
    assert [lay.kind for lay in resolve_overlays([], table=t)] == ["grid"]


# -- a real viewer on Xvfb ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def xdisplay():
    """A private Xvfb display (Xvfb picks a free number via -displayfd); ended by its PID afterwards."""
    exe = shutil.which("Xvfb")
    qt = sys.modules.get("qtpy.QtWidgets")
    app = qt.QApplication.instance() if qt is not None else None
    if app is not None and app.platformName() != "xcb":
        pytest.skip(f"a Qt application already runs on the {app.platformName()!r} platform; napari needs xcb (Xvfb)")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb); napari needs an X display with OpenGL")
    r, w = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(w), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    num = b""
    deadline = time.monotonic() + 20
    while not num.endswith(b"\n") and time.monotonic() < deadline:
        chunk = os.read(r, 16)
        if not chunk:
            break
        num += chunk
    os.close(r)
    if not num.strip():
        proc.kill()
        pytest.skip("Xvfb did not start")
    old = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM")}
    os.environ["DISPLAY"], os.environ["QT_QPA_PLATFORM"] = f":{num.decode().strip()}", "xcb"
    yield os.environ["DISPLAY"]
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(10)


def _settle(viewer, n=15):
    from qtpy.QtWidgets import QApplication

    for _ in range(n):
        QApplication.processEvents()
        time.sleep(0.03)
    return viewer.screenshot(canvas_only=True, flash=False)


def _canvas_xy(viewer, img, world_y, world_x):
    """Screenshot pixel (row, col) of a world point (camera centre + zoom)."""
    cy, cx = _camera(viewer).center[-2:]
    z = _camera(viewer).zoom
    return (world_y - cy) * z + img.shape[0] / 2, (world_x - cx) * z + img.shape[1] / 2


@pytest.mark.napari
@pytest.mark.slow
def test_open_in_napari_screenshot_shows_slide_and_aligned_overlays(xdisplay, cmu_path):
    from wsi_lab.tissue import detect_tissue

    slide = open_slide(cmu_path)
    t = tile_table(slide, min_x=1024)  # right part only: the left part shows bare slide pixels
    t["score"] = 0.0
    k = len(t) // 2 + 1
    t.loc[k, "score"] = 1.0
    other = t.head(3).assign(slide_id="another-slide", x=0, y=0, score=1.0)  # must be dropped
    mask = detect_tissue(slide)
    viewer = open_in_napari(slide, overlays=["score", "grid"], table=pd.concat([t, other]), mask=mask)
    try:
        names = [lay.name for lay in viewer.layers]
        assert names == [slide.slide_id, "tissue", "score", "tiles"]
        base = viewer.layers[0]
        assert base.multiscale and base.scale[-1] == pytest.approx(slide.mpp[0])
        assert type(viewer.layers["tiles"]).__name__ == "Shapes" and len(viewer.layers["tiles"].data) == len(t)
        viewer.layers["tissue"].visible = False
        viewer.layers["score"].opacity = 1.0
        img = _settle(viewer)
        yellow = (np.abs(img[..., :3].astype(int) - YELLOW).sum(-1) < 40)
        assert yellow.sum() > 50
        row, col = np.argwhere(yellow).mean(0)
        sy, sx = base.scale[-2:]
        ey, ex = _canvas_xy(viewer, img, (t.loc[k, "y"] + 127.5) * sy, (t.loc[k, "x"] + 127.5) * sx)
        tile_px = 256 * sx * _camera(viewer).zoom
        assert abs(row - ey) < 0.15 * tile_px + 2 and abs(col - ex) < 0.15 * tile_px + 2
        assert np.ptp(np.argwhere(yellow), axis=0).max() < tile_px * 1.2  # one tile, not the foreign rows at (0, 0)
        # slide pixels are visible left of the tiles: bright background and some stained tissue
        r0, c0 = (int(v) for v in _canvas_xy(viewer, img, 200 * sy, 100 * sx))
        r1, c1 = (int(v) for v in _canvas_xy(viewer, img, 2900 * sy, 1000 * sx))
        left = img[r0:r1, c0:c1, :3].astype(int)
        assert left.size and left.mean() > 150
        assert ((left[..., 0] - left[..., 1]) > 30).mean() > 0.01  # pink/purple H&E
        # the tissue mask layer is aligned with the slide and shows where tissue is
        viewer.layers["score"].visible = viewer.layers["tiles"].visible = False
        viewer.layers["tissue"].visible = True
        viewer.layers["tissue"].opacity = 1.0
        img2 = _settle(viewer)
        green = (img2[..., 1].astype(int) - img2[..., 0] > 100) & (img2[..., 1] > 200)
        assert green.any()
        r, c = np.argwhere(green).T
        wy = (r - img2.shape[0] / 2) / _camera(viewer).zoom + _camera(viewer).center[-2]
        wx = (c - img2.shape[1] / 2) / _camera(viewer).zoom + _camera(viewer).center[-1]
        frac = mask.tissue_fraction(wx / sx - 4, wy / sy - 4, np.full(wx.shape, 8.0), np.full(wx.shape, 8.0))
        assert np.mean(frac > 0) > 0.9
    finally:
        viewer.close()


@pytest.mark.napari
def test_napari_opens_slides_through_the_plugin(xdisplay, ndpi_path):
    viewer = napari.Viewer(show=True)
    try:
        layers = viewer.open(str(ndpi_path), plugin="wsi-lab")
        assert len(layers) == 1  # fluorescence with one channel carrying signal (DAPI, stored as blue)
        lay = layers[0]
        slide = open_slide(ndpi_path)
        assert lay.multiscale and not lay.rgb and lay.name == f"{slide.slide_id} [ch 2]"
        assert lay.contrast_limits[1] > lay.contrast_limits[0] and lay.blending == "additive"
        assert len(lay.data) >= slide.level_count - 1 and lay.data[0].shape[:2] == (4864, 3968)
        assert lay.scale[-1] == pytest.approx(slide.mpp[0])
        img = _settle(viewer)
        assert img[..., 2].max() > 100  # DAPI nuclei are drawn
    finally:
        viewer.close()


def test_layer_kwargs_build_real_napari_layers_in_pixels_without_mpp(cmu_path):
    from napari.layers import Layer as NapariLayer

    from wsi_lab.napari import resolve_overlays, slide_layer_data
    from wsi_lab.tissue import detect_tissue

    class NoMPP:  # the real slide with its µm/px forgotten
        def __init__(self, slide):
            self._s = slide

        def __getattr__(self, name):
            return getattr(self._s, name)

        mpp = None

    slide = open_slide(cmu_path)
    bare = NoMPP(slide)
    data, kwargs, kind = slide_layer_data(bare)
    assert kwargs["scale"] == (1.0, 1.0) and kwargs["units"] == "pixel"
    base = NapariLayer.create(data, kwargs, kind)
    assert base.multiscale and tuple(base.scale) == (1.0, 1.0)
    t = tile_table(slide)
    t["label"] = np.where(t.index % 2, "tumor", "stroma")
    made = [NapariLayer.create(*layer_data(lay, slide.dimensions, (1.0, 1.0), "pixel"))
            for lay in resolve_overlays(["label", "grid"], table=t, mask=detect_tissue(slide))]
    assert [type(m).__name__ for m in made] == ["Image", "Image", "Shapes"]
    assert made[1].metadata["legend"]["type"] == "categorical"
    # the mask image covers the slide: its world extent matches level-0 pixels (edges at -0.5)
    mask_img = made[0]
    d = mask_img.metadata["downsample"]
    h, w = mask_img.data.shape[:2]
    left_edge = mask_img.translate[-1] - mask_img.scale[-1] / 2
    assert left_edge == pytest.approx(-0.5)
    assert w * d >= slide.dimensions[0] > (w - 1) * d


@pytest.mark.napari
def test_cli_napari_screenshot(xdisplay, cmu_path, tmp_path):
    from PIL import Image

    from wsi_lab.cli import main
    from wsi_lab.data.table import write_table

    slide = open_slide(cmu_path)
    t = tile_table(slide)
    t["score"] = (np.arange(len(t)) == 5).astype(float)
    write_table(t, tmp_path / "t.parquet")
    shot = tmp_path / "shot.png"
    assert main(["napari", str(cmu_path), "--table", str(tmp_path / "t.parquet"), "--layer", "score",
                 "--tissue", "otsu", "--screenshot", str(shot)]) == 0
    img = np.asarray(Image.open(shot))
    assert img.ndim == 3 and img.shape[0] > 100
    r, g, b = (img[..., k].astype(int) for k in range(3))
    assert ((r > 200) & (g > 190) & (b < r - 60)).sum() > 20  # the one hot tile, blended at opacity 0.5
