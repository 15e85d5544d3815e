"""Open views follow a display change live (kernel side, ``ui/display_controls.py``): two viewers, the slide
browser's picker and a tuner of one generated fluorescence slide are registered under the slide and the
display folder; a change accepted by one of them is shown by all the others (``display_state``, the
deep-zoom tiles they render, the browser's thumbnail, the tuner's background) and written to
``display.json`` once. A viewer of another slide or recording in another folder is untouched, a closed
viewer drops out, a view whose ``show`` fails does not stop the others, and a refused value changes nothing
anywhere."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wsi_lab.ui.display_controls as dc
from wsi_lab.slide import open_slide
from wsi_lab.ui.browser import SlideBrowser
from wsi_lab.ui.channel_picker import ChannelPicker
from wsi_lab.ui.tuner import ThresholdTuner, tuned_thumbnail
from wsi_lab.ui.viewer import SlideViewer
from wsi_lab.viewing import display_from_token

from .test_viewer_channels import make_fluorescence_ome


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _tile(v: SlideViewer) -> np.ndarray:
    """The full-resolution top-left tile as the viewer's comm path serves it (DAPI checkerboard, TRITC blob)."""
    reply, bufs = v.handle_request({"type": "tile", "id": "t", "level": v.deepzoom.level_count - 1, "col": 0, "row": 0})
    assert reply["ok"], reply
    return _rgb(bufs[0])


def _front_end_sends(widget, **changes) -> None:
    """What widgets/src/display.ts does: the state with new ``settings`` written back."""
    state = widget.display_state
    widget.display_state = {**state, "settings": {**state["settings"], **changes}}


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """The working folder (current directory) with ``slides/fluo.ome.tif`` and ``slides/other.ome.tif``."""
    (tmp_path / "slides").mkdir()
    make_fluorescence_ome(tmp_path / "slides" / "fluo.ome.tif")
    make_fluorescence_ome(tmp_path / "slides" / "other.ome.tif", 512, 384)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def saves(monkeypatch):
    """Every call of the real ``save_display_settings`` made by the display controls (a spy: it still writes)."""
    calls: list[tuple[str, Path]] = []
    real = dc.save_display_settings

    def spy(slide, settings, folder=None):
        calls.append((str(slide.path), Path(folder)))
        return real(slide, settings, folder)

    monkeypatch.setattr(dc, "save_display_settings", spy)
    return calls


def test_a_change_reaches_every_open_view_of_the_slide_and_is_written_once(folder, saves, monkeypatch):
    fluo = str(folder / "slides" / "fluo.ome.tif")
    v1 = SlideViewer(fluo, tile_source="comm")
    v2 = SlideViewer(fluo, tile_source="server")
    other = SlideViewer(folder / "slides" / "other.ome.tif", tile_source="comm")
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    far = SlideViewer(fluo, tile_source="comm")  # records in another folder's display.json
    monkeypatch.chdir(folder)
    b = SlideBrowser(folder / "slides", thumb_size=128)
    assert b.wait_thumbnails(60)
    b.show(fluo)
    tuner = ThresholdTuner(fluo, display_size=128)
    tuner.show_mask.value = tuner.show_grid.value = False  # the background alone
    try:
        assert b.picker is not None
        assert set(dc.display_peers(v1)) >= {v2, b.picker, tuner}
        assert other not in dc.display_peers(v1) and far not in dc.display_peers(v1)
        assert _tile(v2)[..., 2].max() > 200 and _rgb(b._images[fluo].value)[..., 2].max() > 200
        assert tuned_thumbnail(tuner)[..., 2].max() > 200
        other_state, far_state, other_tile = other.display_state, far.display_state, _tile(other)

        # DAPI off in the first viewer's picker (as the front end sends it)
        s = v1.display_state["settings"]
        _front_end_sends(v1, channels=s["channels"][1:], colors=s["colors"][1:], limits=s["limits"][1:])
        assert v1.display_state["error"] == "" and v1.deepzoom.display.channels == (1, 2)
        assert saves == [(fluo, folder)]  # one write, by the viewer where it was changed
        recorded = json.loads((folder / "display.json").read_text())["slides"]["fluo"]["settings"]
        assert recorded == v1.display_state["settings"]
        for view in (v2, b.picker):  # the same state (same tile token), shown
            assert view.display_state["settings"] == v1.display_state["settings"]
            assert view.display_state["token"] == v1.display_state["token"] != ""
            assert view.display_state["error"] == ""
        assert display_from_token(v2.display_state["token"])["channels"] == [1, 2]  # what the server renders
        assert v2.deepzoom.display == v1.deepzoom.display
        tile = _tile(v2)
        assert tile[..., 2].max() < 40, tile[..., 2].max()  # no DAPI blue in the other viewer's tile
        assert tile[..., 0].max() > 100  # TRITC (red) still there
        thumb = _rgb(b._images[fluo].value)
        assert thumb[..., 2].max() < 40 and thumb[..., 1].max() > 150  # the browser's thumbnail redrawn
        assert tuned_thumbnail(tuner)[..., 2].max() < 40  # the tuner's background too
        # another slide and another folder: untouched
        assert other.display_state == other_state and np.array_equal(_tile(other), other_tile)
        assert far.display_state == far_state and far.deepzoom.display.channels == (0, 1, 2)
        assert not (elsewhere / "display.json").exists()

        # the other way: gamma from the browser's picker reaches both viewers, one more write
        mtime = (folder / "display.json").stat().st_mtime_ns
        b.set_display(gamma=2.5)
        assert [c for c in saves if c[0] == fluo] == [(fluo, folder), (fluo, folder)]
        assert (folder / "display.json").stat().st_mtime_ns >= mtime
        assert v1.deepzoom.display.gamma == v2.deepzoom.display.gamma == 2.5
        assert v1.display_state["token"] == v2.display_state["token"] == b.picker.display_state["token"]
    finally:
        for w in (v1, v2, other, far, b, tuner):
            w.close()


def test_closed_and_failing_views_do_not_stop_the_others(folder, saves, caplog):
    fluo = str(folder / "slides" / "fluo.ome.tif")
    slide = open_slide(fluo)

    def broken_show(_settings) -> None:
        raise OSError("the front end is gone")

    v1 = SlideViewer(fluo, tile_source="comm")
    closed = SlideViewer(fluo, tile_source="comm")
    broken = ChannelPicker(slide, show=broken_show)  # registered before v2: its failure comes first
    v2 = SlideViewer(fluo, tile_source="comm")
    try:
        closed.close()
        assert closed not in dc.display_peers(v1) and broken in dc.display_peers(v1)
        closed_state = closed.display_state
        with caplog.at_level(logging.ERROR, logger="wsi_lab.ui.display_controls"):
            v1.set_display(channels=[1])
        assert v2.deepzoom.display.channels == (1,) and v2.display_state["token"] == v1.display_state["token"]
        assert "not passed on to ChannelPicker" in caplog.text and "the front end is gone" in caplog.text
        assert broken.settings is not None and broken.settings.channels == (0, 1, 2)  # it kept what it showed
        assert closed.display_state == closed_state  # a closed viewer gets nothing, and no error comes of it
        assert len(saves) == 1
    finally:
        for w in (v1, broken, v2):
            w.close()
        slide.close()


def test_a_refused_value_changes_nothing_anywhere(folder, saves):
    fluo = str(folder / "slides" / "fluo.ome.tif")
    v1 = SlideViewer(fluo, tile_source="comm")
    v2 = SlideViewer(fluo, tile_source="comm")
    try:
        v1.set_display(channels=[0, 1])
        good, state2, tile2 = (folder / "display.json").read_bytes(), v2.display_state, _tile(v2)
        _front_end_sends(v1, limits=[[80.0, 20.0], [0.0, 255.0]], percentiles=None)  # low >= high
        assert "refused" in v1.display_state["error"]
        _front_end_sends(v1, colors=["purple", [0, 255, 0]])
        assert "unknown colour" in v1.display_state["error"]
        assert v2.display_state == state2 and v2.display_state["error"] == ""  # the other sees nothing
        assert np.array_equal(_tile(v2), tile2)
        assert (folder / "display.json").read_bytes() == good and len(saves) == 1
    finally:
        v1.close()
        v2.close()


def test_the_browsers_cards_follow_a_change_made_in_a_viewer(folder, saves):
    """No picker open in the browser: a viewer's change still redraws that slide's card (and no other)."""
    fluo, other = str(folder / "slides" / "fluo.ome.tif"), str(folder / "slides" / "other.ome.tif")
    b = SlideBrowser(folder / "slides", thumb_size=128)
    v = SlideViewer(fluo, tile_source="comm")
    try:
        assert b.wait_thumbnails(60) and b.picker is None
        assert _rgb(b._images[fluo].value)[..., 2].max() > 200
        other_card = b._images[other].value
        s = v.display_state["settings"]
        _front_end_sends(v, channels=s["channels"][1:], colors=s["colors"][1:], limits=s["limits"][1:])
        assert b.wait_thumbnails(60)
        card = _rgb(b._images[fluo].value)
        assert card[..., 2].max() < 40 and card[..., 1].max() > 150, (card[..., 2].max(), card[..., 1].max())
        assert b._images[other].value == other_card and saves == [(fluo, folder)]
        b.close()  # a closed browser's cards follow no more: the next change reaches only live views
        _front_end_sends(v, gamma=2.0)
        assert v.display_state["error"] == "" and not b._followers
    finally:
        v.close()
        b.close()
