"""find_slides: recursion, MRXS data folders, hidden files, broken files listed with a reason, 1,000 files."""

from __future__ import annotations

import os
import shutil

import pytest

from wsi_lab import find_slides
from wsi_lab.errors import SlideNotFoundError
from wsi_lab.testing import make_slide, plain_tiff


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("tiny") / "tiny.svs", 300, 200, tile=64, mpp=0.5)


def test_tree(tmp_path, tiny):
    root = tmp_path / "slides"
    (root / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(tiny, root / "a.svs")
    plain_tiff(root / "sub" / "b.tif")
    shutil.copy(tiny, root / "sub" / "deeper" / "c.ome.tif")
    (root / "broken.svs").write_text("not a slide")
    (root / "notes.txt").write_text("ignored")
    shutil.copy(tiny, root / ".hidden.svs")
    (root / ".cache").mkdir()
    shutil.copy(tiny, root / ".cache" / "x.svs")
    (root / ".ipynb_checkpoints").mkdir()
    shutil.copy(tiny, root / ".ipynb_checkpoints" / "a-checkpoint.svs")
    # a MIRAX slide: the .mrxs file plus a same-named folder of data files that are not slides
    (root / "case.mrxs").write_bytes(b"not really mirax")
    (root / "case").mkdir()
    (root / "case" / "Slidedat.ini").write_text("[GENERAL]\n")
    shutil.copy(tiny, root / "case" / "Data0000.tif")

    infos = find_slides(root)
    rel = [os.path.relpath(i.path, root) for i in infos]
    assert rel == sorted(["a.svs", "broken.svs", "case.mrxs", "sub/b.tif", "sub/deeper/c.ome.tif"])
    by = {r: i for r, i in zip(rel, infos)}
    a = by["a.svs"]
    assert (a.width, a.height, a.mpp_x, a.vendor, a.error) == (300, 200, 0.5, "aperio", None)
    assert a.slide_id == "a" and by["sub/deeper/c.ome.tif"].slide_id == "c"
    assert by["sub/b.tif"].mpp_x is None  # 72 dpi is not µm/px
    broken = by["broken.svs"]  # the record names the file; its error is the reason alone (no absolute path)
    assert broken.error and broken.path.endswith("broken.svs") and str(root) not in broken.error
    assert broken.error_type == "UnsupportedFormatError" and broken.width is None
    assert by["case.mrxs"].error
    assert a.as_dict()["path"] == str(root / "a.svs")
    quick = find_slides(root, metadata=False)
    assert [i.path for i in quick] == [i.path for i in infos] and quick[0].width is None


def test_not_a_directory(tmp_path, tiny):
    with pytest.raises(SlideNotFoundError, match="missing"):
        find_slides(tmp_path / "missing")
    with pytest.raises(SlideNotFoundError, match="tiny.svs"):
        find_slides(tiny)


@pytest.mark.slow
def test_thousand_files(tmp_path, tiny):
    root = tmp_path / "many"
    for group in range(10):
        (root / f"g{group}").mkdir(parents=True)
        for i in range(100):
            os.symlink(tiny, root / f"g{group}" / f"s{i:03d}.svs")
    infos = find_slides(root)
    assert len(infos) == 1000
    assert all(i.error is None and i.width == 300 for i in infos)
    assert [i.path for i in infos] == sorted(i.path for i in infos)
    assert len(find_slides(root, metadata=False)) == 1000
