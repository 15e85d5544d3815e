"""One rule, one place (issue 7): the slide id of a path, and "µm/px only where the slide has none"."""

from __future__ import annotations

import pickle

import pytest

from wsi_lab.errors import InvalidParameterError
from wsi_lab.slide import open_slide, slide_id
from wsi_lab.testing import make_slide, plain_tiff


@pytest.mark.parametrize("name, expected", [
    ("TCGA-AB-01Z-00-DX1.svs", "TCGA-AB-01Z-00-DX1"),
    ("a.b.ome.tiff", "a.b"),
    ("case.OME.TIF", "case"),
    ("x.tif", "x"),
    ("no_suffix", "no_suffix"),
])
def test_slide_id_of_a_path(name, expected, tmp_path):
    assert slide_id(tmp_path / "cases" / name) == expected
    assert slide_id(str(tmp_path / name)) == expected


def test_slide_id_is_the_one_every_layer_uses(tmp_path):
    from wsi_lab.slide import find_slides
    from wsi_lab.tiling import plan_tiles

    p = make_slide(tmp_path / "s.1.ome.tif", 512, 384, tile=128, mpp=0.5)
    with open_slide(p) as s:
        assert s.slide_id == slide_id(p) == plan_tiles(s, 128).slide_id.iloc[0] == "s.1"
    assert [i.slide_id for i in find_slides(tmp_path)] == ["s.1"]
    assert [i.slide_id for i in find_slides(tmp_path, metadata=False)] == ["s.1"]


def test_mpp_only_if_missing(tmp_path):
    with_mpp = make_slide(tmp_path / "a.svs", 512, 384, tile=128, mpp=0.5)
    without = plain_tiff(tmp_path / "b.tif")
    with open_slide(with_mpp, mpp=0.25, mpp_only_if_missing=True) as s:
        assert s.mpp == pytest.approx((0.5, 0.5))
    with open_slide(with_mpp, mpp=0.25) as s:  # the plain override still wins
        assert s.mpp == (0.25, 0.25)
    with open_slide(without, mpp=0.25, mpp_only_if_missing=True) as s:
        assert s.mpp == (0.25, 0.25)
        assert pickle.loads(pickle.dumps(s)).mpp == (0.25, 0.25)
    with pytest.raises(InvalidParameterError):
        open_slide(without, mpp=0, mpp_only_if_missing=True)


def test_with_mpp_fallback_shares_the_reader_and_leaks_nothing(tmp_path):
    without = plain_tiff(tmp_path / "b.tif")
    with_mpp = make_slide(tmp_path / "a.svs", 512, 384, tile=128, mpp=0.5)
    with open_slide(with_mpp) as s:
        assert s.with_mpp_fallback(0.25) is s and s.with_mpp_fallback(None) is s
    s = open_slide(without)
    view = s.with_mpp_fallback(0.3)
    assert view is not s and view.mpp == (0.3, 0.3) and s.mpp is None
    assert view._reader is s._reader  # nothing was reopened
    view.close()  # the view does not close its owner's reader
    assert s.read_region((0, 0), 0, (8, 8)).shape == (8, 8, 3)
    assert pickle.loads(pickle.dumps(view)).mpp == (0.3, 0.3)
    s.close()
