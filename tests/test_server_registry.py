"""``SlideRegistry`` in-process: one opener per slide, reference-counted use, eviction only of idle
slides, replaced files reopened while old readers finish (issue 14, item 1). No tornado needed."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from wsi_lab.server.registry import SlideRegistry
from wsi_lab.testing import make_slide
from wsi_lab.viewing import slide_key


@pytest.fixture
def root(tmp_path):
    for i in range(4):
        make_slide(tmp_path / f"s{i}.svs", 1024, 768, tile=256, seed=i, source="procedural", associated=False)
    return tmp_path


def _closed(dz) -> bool:
    try:
        os.fstat(dz.slide._reader._fd)
        return False
    except OSError:
        return True


def test_one_opener_for_concurrent_first_requests(root):
    reg = SlideRegistry(root, max_open=2)
    key = slide_key("s0.svs")
    barrier = threading.Barrier(8)

    def go(_):
        barrier.wait(10)
        return reg.tile_bytes(key, 10, 0, 0)

    with ThreadPoolExecutor(8) as pool:
        tiles = list(pool.map(go, range(8)))
    assert len(set(tiles)) == 1 and reg.opens == 1
    reg.close()


def test_only_idle_slides_are_evicted_and_evicted_ones_close(root):
    reg = SlideRegistry(root, max_open=2)
    keys = [slide_key(f"s{i}.svs") for i in range(4)]
    with reg.use(keys[0]) as a, reg.use(keys[1]) as b, reg.use(keys[2]) as c:
        assert not any(_closed(d) for d in (a, b, c))  # 3 in use > max_open 2: nothing is closed
        assert a.get_tile(10, 0, 0).shape[2] == 3
    # readers let go c, b, a: c was the only idle one when the bound could first be enforced
    assert reg.open_count() == 2 and [_closed(x) for x in (a, b, c)] == [False, False, True]
    with reg.use(keys[3]) as d:
        assert not _closed(d)
    assert reg.open_count() == 2 and _closed(a) and not _closed(b)  # a was the least recently opened
    reg.close()
    assert _closed(b) and _closed(d) and reg.open_count() == 0


def test_replaced_file_is_reopened_and_the_old_copy_closes_after_its_reader(root):
    reg = SlideRegistry(root, max_open=4)
    key = slide_key("s0.svs")
    with reg.use(key) as old:
        before = old.get_tile(10, 1, 1)
        tmp = root / ".s0.tmp"
        shutil.copyfile(root / "s1.svs", tmp)
        os.replace(tmp, root / "s0.svs")
        with reg.use(key) as new:
            assert new is not old and (new.get_tile(10, 1, 1) != before).any()
        assert (old.get_tile(10, 1, 1) == before).all() and not _closed(old)  # the old reader finishes
    assert _closed(old) and reg.opens == 2
    reg.close()
