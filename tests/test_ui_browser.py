"""SlideBrowser and the shared widget helpers, on the real slides."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from wsi_lab.errors import NoTissueError, SlideNotFoundError
from wsi_lab.slide import SlideInfo
from wsi_lab.ui.browser import SlideBrowser, mpp_flags, slide_table, thumbnail_bytes
from wsi_lab.ui.common import ErrorBox, composite, encode_image


@pytest.fixture(scope="module")
def browser(shared_slides):
    b = SlideBrowser(shared_slides)
    assert b.wait_thumbnails(60)
    return b


def test_lists_real_slides_with_metadata(browser, cmu_path, ndpi_path, ome_path):
    names = set(browser.table["name"])
    assert {cmu_path.name, ndpi_path.name, ome_path.name} <= names
    row = browser.table.set_index("name").loc[cmu_path.name]
    assert (row["width"], row["height"], row["levels"]) == (2220, 2967, 1)
    assert row["mpp"] == pytest.approx(0.499)
    assert row["magnification"] == 20
    # real slides have consistent scale: nothing flagged
    assert (browser.table["flag_count"] == 0).all()
    assert "CMU-1-Small-Region.svs" in browser.table_html.value


def test_thumbnails_are_real_jpegs_of_the_slide(browser, cmu_path):
    img = browser._images[str(cmu_path)]
    assert img.format == "jpeg" and img.value[:2] == b"\xff\xd8"
    from io import BytesIO

    from PIL import Image
    arr = np.asarray(Image.open(BytesIO(img.value)))
    assert max(arr.shape[:2]) == browser.thumb_size
    # CMU is H&E: mostly white background with pink tissue, not a blank placeholder
    assert arr.std() > 10
    # cached: a second call returns the same object
    assert thumbnail_bytes(cmu_path, browser.thumb_size) is thumbnail_bytes(cmu_path, browser.thumb_size)


def test_filter_sort_and_select(browser, cmu_path, ndpi_path, ome_path):
    seen = []
    browser.on_select(seen.append)
    browser.filter_text.value = "NDPI"
    assert list(browser.visible["name"]) == [ndpi_path.name]
    assert len(browser.grid.children) == 1
    browser.filter_text.value = "hamamatsu"  # vendor matches too
    assert list(browser.visible["name"]) == [ndpi_path.name]
    browser.filter_text.value = ""
    browser.sort_by.value = "size (px)"
    browser.descending.value = True
    assert list(browser.visible["name"])[0] == ndpi_path.name  # 3968x4864 is the largest
    browser.descending.value = False
    assert list(browser.visible["name"])[0] == ome_path.name
    # select by clicking a card's toggle, then programmatically
    browser._toggles[str(cmu_path)].value = True
    assert browser.selected == [str(cmu_path)] and seen[-1] == [str(cmu_path)]
    browser.select([str(cmu_path), str(ndpi_path)])
    assert browser._toggles[str(ndpi_path)].value and "<b>2</b> selected" in browser.summary.value
    browser.select_all.click()
    assert len(browser.selected) == len(browser.visible)
    browser.clear_all.click()
    assert browser.selected == [] and not browser._toggles[str(cmu_path)].value


def test_label_filter_and_unknown_selection(tmp_path, cmu_path, ome_path):
    shutil.copy(cmu_path, tmp_path / "a.svs")
    shutil.copy(ome_path, tmp_path / "b.ome.tif")
    b = SlideBrowser(tmp_path, labels={"a": "tumor", "b": "normal"})
    b.filter_text.value = "tumor"
    assert list(b.visible["name"]) == ["a.svs"]
    b.select([str(tmp_path / "nope.svs")])
    assert b.selected == [] and "Not in this folder" in b.errors.text


def test_flags_missing_and_contradictory_mpp():
    base = dict(path="x.svs", name="x.svs", slide_id="x", size_bytes=1, width=10, height=10, level_count=1)
    assert mpp_flags(SlideInfo(**base, mpp_x=0.25, mpp_y=0.25, magnification=40)) == []
    assert "no µm/px" in mpp_flags(SlideInfo(**base))[0]
    assert "≠" in mpp_flags(SlideInfo(**base, mpp_x=0.25, mpp_y=0.26, magnification=40))[0]
    assert "does not match 40x" in mpp_flags(SlideInfo(**base, mpp_x=1.0, mpp_y=1.0, magnification=40))[0]
    assert mpp_flags(SlideInfo(**base, mpp_x=0.9, mpp_y=0.9, magnification=20)) == []  # within 2x
    assert mpp_flags(SlideInfo(**base, error="corrupt"))[0].startswith("unreadable")
    df = slide_table([SlideInfo(**base), SlideInfo(**{**base, "name": "y.svs"}, mpp_x=0.5, mpp_y=0.5)])
    assert list(df["flag_count"]) == [1, 0]


def test_missing_folder_and_broken_file_give_messages(tmp_path):
    b = SlideBrowser(tmp_path / "nope")
    assert "not a directory" in b.errors.text and b.table.empty
    (tmp_path / "broken.svs").write_bytes(b"not a slide at all")
    b = SlideBrowser(tmp_path)
    assert b.table["flags"].iloc[0].startswith("unreadable")
    assert b.wait_thumbnails(30)  # a failed thumbnail finishes (with a placeholder), no exception
    assert "thumbnail failed" in b._toggles[str(tmp_path / "broken.svs")].tooltip
    empty = SlideBrowser(tmp_path / "broken.svs").errors.text
    assert "not a directory" in empty


def test_error_box_is_readable_not_a_traceback():
    box = ErrorBox()
    with box.guard("tiling"):
        raise NoTissueError("slide.svs: no tissue found; lower the threshold")
    assert box.text == "tiling: slide.svs: no tissue found; lower the threshold"
    assert "Traceback" not in box.value and "wsi-lab-error" in box.value
    with box.guard():
        raise KeyError("boom")
    assert "Unexpected KeyError" in box.text
    with box.guard():
        pass
    assert box.value == ""
    box.show(SlideNotFoundError("<b>x</b> missing"))
    assert "&lt;b&gt;" in box.value  # escaped


def test_image_helpers():
    base = np.zeros((4, 6, 3), np.uint8)
    over = np.zeros((2, 3, 4), np.uint8)
    over[..., 0], over[..., 3] = 255, 255
    out = composite(base, over)
    assert out.shape == (4, 6, 3) and (out[..., 0] == 255).all()
    assert encode_image(np.ones((3, 3), bool))[:4] == b"\x89PNG"
