"""The tifffile backend's hot path: direct JPEG decode, the tile LRU, parallel decode of big regions,
and thread safety."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile

from wsi_lab import open_slide
from wsi_lab.io import LRUCache
from wsi_lab.slide import tifffile_backend
from wsi_lab.testing import make_slide


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("tf") / "hot.svs", 4000, 3000, tile=256, tissue_fraction=0.8, seed=9)


def _reference(path, x, y, w, h):
    """The same box straight from tifffile (whole level 0 decoded by tifffile itself)."""
    with tifffile.TiffFile(path) as tf:
        return tf.pages[0].asarray()[y:y + h, x:x + w]


def test_direct_decode_matches_tifffile(slide_file, slide_path):
    with open_slide(slide_file, backend="tifffile") as s:
        np.testing.assert_array_equal(s.read_region((300, 500), 0, (900, 700)), _reference(slide_file, 300, 500, 900, 700))
    with open_slide(slide_path, backend="tifffile") as s:  # every real slide: same pixels as tiffslide
        import tiffslide

        W, H = s.dimensions
        box = (W // 3, H // 3)
        with tiffslide.TiffSlide(str(slide_path)) as ts:
            ref = ts.read_region(box, 0, (333, 222), as_array=True)
        got = s.read_region(box, 0, (333, 222))
        assert np.abs(got.astype(int) - ref[..., :3]).max() <= 1


def test_parallel_decode_same_as_serial(slide_file, monkeypatch):
    with open_slide(slide_file, backend="tifffile") as s:
        par = s.read_region((17, 33), 0, (2500, 1900))  # ~110 tiles: decoded on the pool
    monkeypatch.setenv("WSI_LAB_DECODE_THREADS", "1")
    assert tifffile_backend._decode_pool() is None
    with open_slide(slide_file, backend="tifffile") as s:
        ser = s.read_region((17, 33), 0, (2500, 1900))
    np.testing.assert_array_equal(par, ser)


def test_returned_arrays_are_private_copies(slide_file):
    with open_slide(slide_file, backend="tifffile") as s:
        a = s.read_region((0, 0), 0, (256, 256))
        assert a.flags.writeable
        before = a.copy()
        a[:] = 0  # must not poison the tile cache
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (256, 256)), before)


def test_concurrent_readers_decode_each_tile_once(slide_file):
    with open_slide(slide_file, backend="tifffile") as s:
        reader = s._reader
        calls: list[int] = []
        lock = threading.Lock()
        original = reader._decode

        def counting(level, lv, index):
            with lock:
                calls.append(index)
            return original(level, lv, index)

        reader._decode = counting
        boxes = [((x, y), (300, 300)) for x in range(0, 3000, 250) for y in range(0, 2000, 250)] * 3
        serial = {b: s.read_region(b[0], 0, b[1]) for b in boxes[: len(boxes) // 3]}
        calls.clear()
        reader._cache = LRUCache(max_bytes=64 * 2**20)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda b: s.read_region(b[0], 0, b[1]), boxes))
        for b, arr in zip(boxes, got):
            np.testing.assert_array_equal(arr, serial[b])
        assert len(calls) == len(set(calls))  # no tile decoded twice, though 8 threads raced for them


def test_cache_is_bounded():
    cache = LRUCache(max_bytes=3 * 1000)
    for i in range(10):
        cache.put((0, i), np.zeros(1000, np.uint8))
    assert cache.total_bytes <= 3000 and cache.get((0, 9)) is not None and cache.get((0, 0)) is None
    cache.put((0, 99), np.zeros(10_000, np.uint8))  # larger than the whole cache: not kept
    assert cache.get((0, 99)) is None


def test_failed_load_does_not_block_waiters():
    cache = LRUCache(max_bytes=64 * 2**20)

    def boom():
        raise OSError("bad tile")

    with pytest.raises(OSError):
        cache.get_or_load((0, 1), boom)
    assert cache.get_or_load((0, 1), lambda: np.ones(3, np.uint8)).sum() == 3
