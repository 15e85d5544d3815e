"""Channel picker, contrast limits and gamma (issue 12), kernel side: OME channel names and colours, the
picker's options, the ``?display=`` tile token the server renders with, the viewer's ``display_state``
round trip, and the settings recorded in ``display.json`` and reloaded when the slide is opened again."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsi_lab.errors import InvalidParameterError
from wsi_lab.slide import open_slide
from wsi_lab.slide.display import DisplaySettings, auto_display, channel_metadata, channel_options, display_from_spec
from wsi_lab.slide.display_file import display_file, load_display_settings, save_display_settings
from wsi_lab.viewing import DeepZoom, display_from_token, display_token

from .conftest import CMU

# OME colours are signed 32-bit RGBA integers
BLUE, GREEN, RED = 0x0000FFFF, 0x00FF00FF, 0xFF0000FF - 2**32


def make_fluorescence_ome(path: str | os.PathLike, width: int = 640, height: int = 512) -> Path:
    """A 3-channel uint16 OME-TIFF (CYX, 256 px tiles, 0.5 µm/px) on a black background: ``DAPI`` (blue in
    its metadata) a checkerboard of bright squares, ``FITC`` (green) a blob on the right, ``TRITC`` (red) a
    dimmer blob on the left."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.zeros((3, height, width), np.uint16)
    img[0] = 40 + 2400 * (((xx // 40 + yy // 40) % 2 == 0) & (xx > 60) & (xx < width - 60) & (yy > 60) & (yy < height - 60))
    img[1] = 30 + 2000 * np.exp(-(((xx - 0.7 * width) ** 2 + (yy - 0.5 * height) ** 2) / (0.04 * width * width)))
    img[2] = 20 + 900 * np.exp(-(((xx - 0.3 * width) ** 2 + (yy - 0.5 * height) ** 2) / (0.04 * width * width)))
    tifffile.imwrite(path, img, tile=(256, 256), compression="zlib", photometric="minisblack",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                               "Channel": {"Name": ["DAPI", "FITC", "TRITC"], "Color": [BLUE, GREEN, RED]}})
    return Path(path)


@pytest.fixture(scope="module")
def ome(tmp_path_factory):
    return make_fluorescence_ome(tmp_path_factory.mktemp("ome") / "fluo.ome.tif")


def _jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def test_channel_metadata_and_picker_options(ome):
    with open_slide(ome) as s:
        assert channel_metadata(s) == [{"name": "DAPI", "color": (0, 0, 255)}, {"name": "FITC", "color": (0, 255, 0)},
                                       {"name": "TRITC", "color": (255, 0, 0)}]
        auto = auto_display(s)
        assert auto.modality == "fluorescence" and auto.channels == (0, 1, 2)
        assert auto.colors == ((0, 0, 255), (0, 255, 0), (255, 0, 0))  # the file's colours, not R, G, B
        opts = channel_options(s)
    assert [c["name"] for c in opts["channels"]] == ["DAPI", "FITC", "TRITC"]
    assert all(c["shown"] and c["limits"][1] > c["limits"][0] for c in opts["channels"])
    assert [0.5, 99.5] in opts["percentile_choices"]
    with open_slide(CMU) as s:  # brightfield: no picker
        assert channel_metadata(s) == [] and channel_options(s)["channels"] == []


def test_spec_with_percentiles_and_bad_specs(ome):
    with open_slide(ome) as s:
        a = display_from_spec(s, {"channels": [1], "colors": [[0, 255, 0]], "percentiles": [0.5, 99.5], "gamma": 1})
        b = display_from_spec(s, {"channels": [1], "colors": [[0, 255, 0]], "percentiles": [0.0, 100.0], "gamma": 1})
        assert a.limits[0][1] <= b.limits[0][1] and a.percentiles == (0.5, 99.5)
        manual = display_from_spec(s, {**a.to_dict(), "percentiles": None, "limits": [[5, 80]]})
        assert manual.limits == ((5.0, 80.0),) and manual.percentiles is None
        for bad in ({"channels": [7], "colors": [[1, 2, 3]], "percentiles": [1, 99]},  # no such channel
                    {"channels": [0], "colors": [[1, 2, 3]], "percentiles": [99, 1]},
                    {"channels": [0], "colors": [[300, 0, 0]], "limits": [[0, 9]]},
                    {"channels": [0], "colors": [[1, 2, 3]], "limits": [[9, 9]]},
                    {"channels": [0], "colors": [[1, 2, 3]], "limits": [[0, 9]], "gamma": 0},
                    {"channels": "x", "colors": 3}):
            with pytest.raises(InvalidParameterError):
                display_from_spec(s, bad)


def test_display_token_round_trip_and_bad_tokens(ome):
    with open_slide(ome) as s:
        auto = auto_display(s)
        spec = display_from_token(display_token(auto))
        assert "limits" not in spec and spec["percentiles"] == [0.5, 99.5]
        assert display_from_spec(s, spec) == auto
        manual = DisplaySettings((0, 2), ((0, 0, 255), (255, 0, 0)), ((0.0, 100.0), (3.0, 40.0)), 2.0, "fluorescence")
        assert display_from_spec(s, display_from_token(display_token(manual))) == manual
    assert display_from_token("raw") == "raw" and display_token(None) == "raw"
    # the browser's JSON.stringify writes 1.0 as 1: the kernel's token is the same text
    js = '{"channels":[0,2],"colors":[[0,0,255],[255,0,0]],"limits":[[0,100],[3,40.5]],"gamma":2}'
    manual2 = DisplaySettings((0, 2), ((0, 0, 255), (255, 0, 0)), ((0.0, 100.0), (3.0, 40.5)), 2.0, "fluorescence")
    assert display_token(manual2) == base64.urlsafe_b64encode(js.encode()).decode().rstrip("=")
    for bad in ("not base64!", "A" * 5000, base64.urlsafe_b64encode(b"[1, 2]").decode(),
                base64.urlsafe_b64encode(b'{"evil": 1}').decode(), base64.urlsafe_b64encode(b"{nope").decode()):
        with pytest.raises(InvalidParameterError):
            display_from_token(bad)


def test_server_renders_tiles_with_the_token(ome, tmp_path):
    from wsi_lab.server.registry import SlideRegistry

    (tmp_path / ome.name).write_bytes(ome.read_bytes())
    reg = SlideRegistry(tmp_path)
    key = reg.key_for_path(ome.name)
    level = reg.describe(key)["level_count"] - 1  # full resolution
    default = _jpeg(reg.tile_bytes(key, level, 0, 0))
    with open_slide(tmp_path / ome.name) as s:
        auto = auto_display(s)
    no_dapi = DisplaySettings((1, 2), auto.colors[1:], auto.limits[1:], 1.0, "fluorescence")
    off = _jpeg(reg.tile_bytes(key, level, 0, 0, display_token(no_dapi)))
    assert default[..., 2].max() > 200 and off[..., 2].max() < 30  # DAPI (blue) switched off
    dark = _jpeg(reg.tile_bytes(key, level, 0, 0, display_token(auto.with_gamma(3.0))))
    assert dark.mean() < default.mean() - 5  # gamma 3 darkens mid tones
    assert np.array_equal(_jpeg(reg.tile_bytes(key, level, 0, 0)), default)  # the default is still served
    raw = _jpeg(reg.tile_bytes(key, level, 0, 0, "raw"))
    assert not np.array_equal(raw, default)
    with pytest.raises(InvalidParameterError):
        reg.tile_bytes(key, level, 0, 0, "%%%")
    reg.close()


def test_display_file_is_atomic_keeps_other_slides_and_refuses_a_bad_file(ome, tmp_path):
    with open_slide(ome) as s, open_slide(CMU) as bf:
        assert load_display_settings(s, tmp_path) is None
        settings = DisplaySettings((2,), ((255, 255, 255),), ((3.0, 40.0),), 0.5, "fluorescence")
        path = save_display_settings(s, settings, tmp_path)
        assert path == display_file(tmp_path) == tmp_path / "display.json"
        save_display_settings(bf, DisplaySettings(gamma=1.2), tmp_path)
        assert load_display_settings(s, tmp_path) == settings
        assert load_display_settings(bf, tmp_path).gamma == 1.2
        assert not [p for p in tmp_path.iterdir() if p.name != "display.json"]  # no temp files left
        data = json.loads(path.read_text())
        assert set(data["slides"]) == {"fluo", "CMU-1-Small-Region"} and data["slides"]["fluo"]["dimensions"] == [640, 512]
        data["slides"]["fluo"]["dimensions"] = [1, 1]  # recorded for another slide of the same name
        path.write_text(json.dumps(data))
        assert load_display_settings(s, tmp_path) is None
        save_display_settings(bf, None, tmp_path)
        assert "CMU-1-Small-Region" not in json.loads(path.read_text())["slides"]
        path.write_text("{broken")
        with pytest.raises(InvalidParameterError, match="display.json"):
            load_display_settings(s, tmp_path)
        with pytest.raises(InvalidParameterError):
            save_display_settings(s, settings, tmp_path)
        assert path.read_text() == "{broken"  # nothing already written is lost


def test_viewer_display_state_set_display_and_reload(ome, tmp_path, monkeypatch):
    from wsi_lab.ui import SlideViewer

    monkeypatch.chdir(tmp_path)
    v = SlideViewer(ome, tile_source="comm")
    state = v.display_state
    assert [c["name"] for c in state["options"]["channels"]] == ["DAPI", "FITC", "TRITC"]
    assert state["settings"]["percentiles"] == [0.5, 99.5] and state["token"]
    level = v.deepzoom.level_count - 1

    def tile() -> np.ndarray:
        reply, bufs = v.handle_request({"type": "tile", "id": "t", "level": level, "col": 0, "row": 0})
        assert reply["ok"], reply
        return _jpeg(bufs[0])

    before = tile()
    s = v.set_display(channels=[1, 2], gamma=2.0)
    assert s.channels == (1, 2) and s.gamma == 2.0 and s.percentiles == (0.5, 99.5)
    after = tile()
    assert before[..., 2].max() > 200 and after[..., 2].max() < 30
    assert v.display_state["settings"]["channels"] == [1, 2] and v.display_state["token"] == display_token(s)
    assert v.display_state["file"] == str(tmp_path / "display.json")
    # the front end writes settings (manual limits for FITC only): resolved, applied, echoed, recorded
    front = {**v.display_state, "settings": {"channels": [1], "colors": [[255, 0, 255]], "limits": [[0, 60]],
                                             "gamma": 1.0, "percentiles": None}}
    v.display_state = front
    assert v.deepzoom.display.channels == (1,) and v.deepzoom.display.limits == ((0.0, 60.0),)
    assert v.display_state["settings"]["colors"] == [[255, 0, 255]] and v.display_state["error"] == ""
    # a bad spec from the front end is refused with a message; the display stays
    v.display_state = {**v.display_state, "settings": {"channels": [9], "colors": [[1, 1, 1]], "limits": [[0, 1]]}}
    assert v.deepzoom.display.channels == (1,) and "channels" in v.display_state["error"]
    v.close()
    # opened again: the recorded settings come back
    v2 = SlideViewer(str(ome), tile_source="comm")
    assert v2.deepzoom.display.channels == (1,) and v2.display_state["settings"]["limits"] == [[0.0, 60.0]]
    v2.set_display(reset=True)
    assert v2.deepzoom.display == auto_display(v2.slide)
    with pytest.raises(InvalidParameterError):
        v2.set_display(channels=[5])
    v2.close()
    bf = SlideViewer(CMU, tile_source="comm")  # brightfield: no picker, nothing recorded
    assert bf.display_state["options"]["channels"] == [] and bf.display_state["token"] == ""
    with pytest.raises(InvalidParameterError):
        bf.set_display(channels=[0])
    bf.close()
    assert set(json.loads((tmp_path / "display.json").read_text())["slides"]) == {"fluo"}


def test_deepzoom_tile_bytes_take_a_display(ome):
    with open_slide(ome) as s:
        dz = DeepZoom(s, display="auto")
        lvl = dz.level_count - 1
        own = dz.get_tile_bytes(lvl, 0, 0)
        assert dz.get_tile_bytes(lvl, 0, 0, dz.display) == own
        assert dz.display_for_token(None) is dz.display and dz.display_for_token("raw") is None
        assert dz.get_tile_bytes(lvl, 0, 0, None) != own


def test_browser_thumbnails_and_tuner_background_follow_the_recorded_display(ome, tmp_path, monkeypatch):
    from wsi_lab.ui.browser import thumbnail_bytes
    from wsi_lab.ui.tuner import ThresholdTuner, tuned_thumbnail

    monkeypatch.chdir(tmp_path)
    auto = _jpeg(thumbnail_bytes(ome, 128))
    assert auto[..., 2].max() > 200  # DAPI shown in its own colour (blue)
    with open_slide(ome) as s:
        save_display_settings(s, DisplaySettings((1,), ((0, 255, 0),), ((0.0, 60.0),), 1.0, "fluorescence"))
    only_fitc = _jpeg(thumbnail_bytes(ome, 128))  # not the cached picture of the old settings
    assert only_fitc[..., 2].max() < 30 and only_fitc[..., 0].max() < 30 and only_fitc[..., 1].max() > 200
    tuner = ThresholdTuner(ome)
    try:
        tuner.show_mask.value = tuner.show_grid.value = False
        pic = tuned_thumbnail(tuner).astype(np.int16)
        assert pic[..., 0].max() < 40 and pic[..., 1].max() > 200  # raw pixels would put DAPI in red
    finally:
        tuner.close()
