"""``wsi_lab.io.LRUCache``: the one LRU of the package (bounds, eviction hook, veto, single-flight loads)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from wsi_lab.io import LRUCache


def test_bounded_by_items_and_bytes_with_an_eviction_hook():
    dropped = []
    c = LRUCache(max_items=3, on_evict=lambda k, v: dropped.append(k))
    for k in "abcd":
        c.put(k, k * 2)
    assert "a" not in c and len(c) == 3 and dropped == ["a"]
    c.get("b")  # now most recent: "c" goes next
    c.put("e", "ee")
    assert dropped == ["a", "c"] and c.values() == ["dd", "bb", "ee"]
    c.put("b", "BB")  # replacing hands the old value to the hook
    assert dropped[-1] == "b" and c.get("b") == "BB"
    assert c.pop("d") == "dd" and dropped[-1] == "d" and c.pop("zz") is None
    nb = LRUCache(max_bytes=3000)
    for i in range(10):
        nb.put(i, np.zeros(1000, np.uint8))
    assert nb.total_bytes <= 3000 and nb.get(9) is not None and nb.get(0) is None
    nb.put("huge", np.zeros(10_000, np.uint8))
    assert nb.get("huge") is None and nb.total_bytes <= 3000
    c.clear(notify=True)
    assert len(c) == 0 and c.total_bytes == 0


def test_can_evict_vetoes_entries_in_use():
    busy = {"a"}
    c = LRUCache(max_items=2, can_evict=lambda k, v: k not in busy)
    c.put("a", 1)
    c.put("b", 2)
    c.put("c", 3)  # "a" is in use: "b" goes instead
    assert "a" in c and "b" not in c and "c" in c
    c.put("d", 4)
    c.put("e", 5)
    assert "a" in c and len(c) == 2
    busy.clear()
    busy.update({"a", "e"})
    c.put("f", 6)  # "a" and "e" are in use and a put never evicts itself: over its bound until they free up
    assert c.values() == [1, 5, 6]
    busy.clear()
    c.evict()
    assert c.values() == [5, 6]


def test_get_or_load_loads_once_under_contention_and_survives_failures():
    calls = []
    c = LRUCache(max_items=10)

    def load():
        calls.append(1)
        time.sleep(0.05)
        return 42

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: c.get_or_load("k", load), range(8))) == [42] * 8
    assert len(calls) == 1

    def boom():
        raise OSError("bad")

    with pytest.raises(OSError):
        c.get_or_load("x", boom)
    assert c.get_or_load("x", lambda: 7) == 7


def test_thread_safe_under_mixed_use():
    c = LRUCache(max_items=50, max_bytes=10_000)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(2000):
                k = int(rng.integers(0, 200))
                if rng.random() < 0.5:
                    c.put(k, b"x" * int(rng.integers(1, 400)))
                else:
                    c.get(k)
        except Exception as exc:  # collected and asserted below  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(c) <= 50 and c.total_bytes <= 10_000
    assert c.total_bytes == sum(len(v) for v in c.values())
