"""The slide browser's channel picker (issue 12), kernel side: a multi-channel slide gets the viewer's
picker (``ChannelPicker`` over ``ui/display_controls.py``), a change redraws the slide's thumbnail at once
and is recorded atomically in the working folder's ``display.json``, and a viewer opened afterwards shows
the same settings (same ``?display=`` token). Brightfield slides get no picker; bad values come back as a
message in the widget and leave the recorded file as it was."""

from __future__ import annotations

import errno
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._bundles import assert_bundle_matches
from wsi_lab.errors import InvalidParameterError
from wsi_lab.testing import make_slide
from wsi_lab.ui.browser import SlideBrowser, thumbnail_bytes
from wsi_lab.ui.display_controls import parse_color

from .test_viewer_channels import make_fluorescence_ome


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """A working folder (the current directory) with ``slides/`` holding a 3-channel OME-TIFF and a
    small brightfield SVS."""
    slides = tmp_path / "slides"
    slides.mkdir()
    make_fluorescence_ome(slides / "fluo.ome.tif")
    make_slide(slides / "bright.svs", 768, 512, source="procedural", associated=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _browser(folder: Path) -> SlideBrowser:
    b = SlideBrowser(folder / "slides", thumb_size=128)
    assert b.wait_thumbnails(60)
    return b


def _front_end_sends(picker, **changes) -> None:
    """What widgets/src/display.ts does: the state with new ``settings`` written back."""
    state = picker.display_state
    picker.display_state = {**state, "settings": {**state["settings"], **changes}}


def test_hiding_a_channel_redraws_the_thumbnail_records_it_and_the_viewer_follows(folder):
    from wsi_lab.ui import SlideViewer

    b = _browser(folder)
    fluo = str(folder / "slides" / "fluo.ome.tif")
    before = _rgb(b._images[fluo].value)
    assert before[..., 2].max() > 200 and before[..., 1].max() > 150  # DAPI (blue) and FITC (green) shown
    b.show(fluo)
    picker = b.picker
    assert picker is not None and picker in b.picker_box.children
    assert [c["name"] for c in picker.display_state["options"]["channels"]] == ["DAPI", "FITC", "TRITC"]
    assert not (folder / "display.json").exists()  # looking records nothing
    # DAPI off, as the front end's checkbox sends it (the remaining channels keep colours and limits)
    s = picker.display_state["settings"]
    _front_end_sends(picker, channels=s["channels"][1:], colors=s["colors"][1:], limits=s["limits"][1:])
    assert picker.error == "" and picker.settings is not None and picker.settings.channels == (1, 2)
    after = _rgb(b._images[fluo].value)
    assert after[..., 2].max() < 40, after[..., 2].max()  # no blue left
    assert after[..., 1].max() > 150 and after[..., 0].max() > 100  # FITC and TRITC still there
    recorded = json.loads((folder / "display.json").read_text())["slides"]["fluo"]
    assert recorded["settings"]["channels"] == [1, 2] and recorded["settings"]["percentiles"] == [0.5, 99.5]
    assert not list(folder.glob(".display.json.*"))  # written through a temp file + rename, none left
    # gamma from Python: thumbnail darker, recorded
    b.set_display(gamma=3.0)
    dark = _rgb(b._images[fluo].value)
    assert dark.mean() < after.mean() - 1
    assert json.loads((folder / "display.json").read_text())["slides"]["fluo"]["settings"]["gamma"] == 3.0
    # the viewer opened on that slide shows the same settings: the same tile token
    v = SlideViewer(fluo, tile_source="comm")
    try:
        assert v.display_state["token"] == picker.display_state["token"] != ""
        assert v.deepzoom.display == picker.settings
    finally:
        v.close()
    # a new browser (another Lab) draws the recorded settings, not a cached picture of the old ones
    again = _rgb(thumbnail_bytes(fluo, 128))
    assert again[..., 2].max() < 40 and np.abs(again - dark).mean() < 3
    b.close()


def test_brightfield_slides_get_no_picker(folder):
    b = _browser(folder)
    b.show(str(folder / "slides" / "fluo.ome.tif"))
    assert b.picker is not None
    b.show(str(folder / "slides" / "bright.svs"))
    assert b.picker is None and b.picker_box.children == ()
    with pytest.raises(InvalidParameterError, match="no multi-channel slide"):
        b.set_display(gamma=2.0)
    assert not (folder / "display.json").exists()
    b.close()


def test_bad_values_give_a_message_and_keep_the_good_display_file(folder, monkeypatch):
    b = _browser(folder)
    fluo = str(folder / "slides" / "fluo.ome.tif")
    b.show(fluo)
    picker = b.picker
    b.set_display(channels=[0, 1], colors=["cyan", "#ff00ff"])  # names and hex are colours too
    assert picker.settings.colors == ((0, 255, 255), (255, 0, 255))
    good = (folder / "display.json").read_bytes()
    shown = b._images[fluo].value
    token = picker.display_state["token"]
    # min >= max from the front end: refused with a sentence, nothing shown or recorded changes
    _front_end_sends(picker, limits=[[80.0, 20.0], [0.0, 255.0]], percentiles=None)
    assert "high > low" in picker.error and "Traceback" not in picker.error
    assert picker.display_state["token"] == token and picker.settings.colors == ((0, 255, 255), (255, 0, 255))
    # an unknown colour
    _front_end_sends(picker, colors=["purple", [0, 255, 0]])
    assert "unknown colour 'purple'" in picker.error and "#rrggbb" in picker.error
    _front_end_sends(picker, colors=[[300, 0, 0], [0, 255, 0]])
    assert "unknown colour [300, 0, 0]" in picker.error
    _front_end_sends(picker, gamma="steep")
    assert "refused" in picker.error
    assert (folder / "display.json").read_bytes() == good and b._images[fluo].value == shown
    with pytest.raises(InvalidParameterError, match="unknown colour"):
        b.set_display(colors=["purple", "red"])
    with pytest.raises(InvalidParameterError, match="high > low"):
        b.set_display(limits=[[10, 10], [0, 255]])
    assert (folder / "display.json").read_bytes() == good
    # a write that fails half way (disk full) loses nothing: the old file stays whole, no temp file left
    real_write = Path.write_bytes

    def half_then_full(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    _front_end_sends(picker, gamma=2.0)
    monkeypatch.setattr(Path, "write_bytes", real_write)
    assert "not recorded" in picker.error and "No space left" in picker.error
    assert (folder / "display.json").read_bytes() == good and not list(folder.glob(".display.json.*"))
    # a display.json that is not ours is refused, never overwritten
    (folder / "display.json").write_text("{broken")
    _front_end_sends(picker, gamma=1.5)
    assert "not valid JSON" in picker.error and (folder / "display.json").read_text() == "{broken"
    b.close()


def test_parse_color():
    assert parse_color("Red") == (255, 0, 0) and parse_color("#00ff80") == (0, 255, 128)
    assert parse_color((1, 2, 3)) == (1, 2, 3) and parse_color(np.array([4, 5, 6])) == (4, 5, 6)
    for bad in ("purple", "#12345", "#zzzzzz", (1, 2), (0, 0, 256), (0.5, 0, 0), None, 7):
        with pytest.raises(InvalidParameterError, match="unknown colour"):
            parse_color(bad)


def test_committed_picker_bundle_matches_the_typescript_sources(tmp_path):
    """wsi_lab/static/picker.js is what `npm run build` makes from widgets/src/picker.ts (which draws the
    viewer's own display.ts panel; skipped without node_modules)."""
    assert_bundle_matches("picker", tmp_path, css="picker.css")
