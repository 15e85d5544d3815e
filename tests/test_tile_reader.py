"""SlideCache: an LRU of open slides that belongs to one process and one thread."""

from __future__ import annotations

import pickle
import threading

from wsi_lab.data.tile_reader import SlideCache
from wsi_lab.testing import make_slide


def _slides(tmp_path, n):
    return [str(make_slide(tmp_path / f"s{i}.svs", 512, 384, mpp=0.5, seed=i, source="procedural")) for i in range(n)]


def test_least_recently_used_slide_is_closed_and_reopened(tmp_path, monkeypatch):
    a, b, c = _slides(tmp_path, 3)
    cache = SlideCache(maxsize=2)
    closed = []
    sa = cache.get(a)
    monkeypatch.setattr(sa, "close", lambda: closed.append(a))
    assert cache.get(a) is sa and len(cache) == 1
    sb = cache.get(b)
    monkeypatch.setattr(sb, "close", lambda: closed.append(b))
    cache.get(a)  # b is now the least recently used
    cache.get(c)
    assert closed == [b] and len(cache) == 2
    assert cache.get(a) is sa and cache.get(b) is not sb
    cache.close()
    assert a in closed and len(cache) == 0


def test_other_thread_and_unpickled_copy_start_empty(tmp_path):
    (a,) = _slides(tmp_path, 1)
    cache = SlideCache(maxsize=2, backend="tifffile")
    mine = cache.get(a)
    seen = {}

    def other() -> None:
        seen["len"] = len(cache)
        seen["slide"] = cache.get(a)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["len"] == 0 and seen["slide"] is not mine  # never a handle of another thread
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.maxsize, copy.backend, len(copy)) == (2, "tifffile", 0)
    assert copy.get(a) is not mine and len(copy) == 1
    copy.close()
    seen["slide"].close()
    cache.close()
