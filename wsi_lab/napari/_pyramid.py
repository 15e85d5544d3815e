"""A slide as a lazy multiscale pyramid of Dask arrays (one per level), read chunk by chunk.

Each level is an ``(H, W, 3) uint8`` Dask array whose chunks are ``Slide.read_region`` calls, so
nothing is read until a viewer asks for a region. Slides without a pyramid (or whose smallest level
is still large) get extra lazily 2x-coarsened levels so a viewer can zoom out without a full read.
"""

from __future__ import annotations

import threading

import numpy as np

from wsi_lab.errors import InvalidParameterError

__all__ = ["slide_pyramid", "slide_scale"]


class _LevelReader:
    """Callable for ``dask.array.map_blocks``: reads the block at ``block_info`` from one level.
    One lock per slide: backends are not all safe for concurrent reads from viewer threads."""

    def __init__(self, slide, level: int, lock: threading.Lock | None = None) -> None:
        self.slide, self.level = slide, level
        self.lock = lock or threading.Lock()

    def __call__(self, block_info=None) -> np.ndarray:
        (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
        ds = self.slide.level_downsamples[self.level]
        loc = (int(round(c0 * ds)), int(round(r0 * ds)))
        with self.lock:
            return self.slide.read_region(loc, self.level, (c1 - c0, r1 - r0))

    def __getstate__(self):
        return {"slide": self.slide, "level": self.level}

    def __setstate__(self, state):
        self.slide, self.level = state["slide"], state["level"]
        self.lock = threading.Lock()


def _chunks(n: int, size: int) -> tuple[int, ...]:
    return tuple(min(size, n - i) for i in range(0, n, size))


def slide_pyramid(slide, chunk: int = 1024, min_size: int = 1024) -> list:
    """Lazy pyramid of ``slide``: a list of ``(H, W, 3) uint8`` Dask arrays, level 0 first, each
    chunked in ``chunk`` x ``chunk`` pixel blocks. Levels that do not shrink are skipped; 2x-coarsened
    levels are appended until the smallest is ≤ ``min_size`` pixels on its longer side."""
    import dask.array as da

    if int(chunk) < 16:
        raise InvalidParameterError(f"chunk must be ≥ 16 pixels, got {chunk!r}")
    lock = threading.Lock()
    levels = []
    last = None
    for level, (w, h) in enumerate(slide.level_dimensions):
        if last is not None and (w >= last[0] or h >= last[1]):
            continue  # not smaller than the previous level: napari needs strictly shrinking levels
        arr = da.map_blocks(_LevelReader(slide, level, lock), dtype=np.uint8,
                            chunks=(_chunks(h, chunk), _chunks(w, chunk), (3,)),
                            meta=np.empty((0, 0, 0), np.uint8), name=f"wsi-lab-{slide.slide_id}-{level}-{w}x{h}")
        levels.append(arr)
        last = (w, h)
    while max(levels[-1].shape[:2]) > min_size and min(levels[-1].shape[:2]) >= 4:
        prev = levels[-1]
        small = da.coarsen(np.mean, prev, {0: 2, 1: 2}, trim_excess=True, dtype=np.float32)
        levels.append(small.round().astype(np.uint8).rechunk((chunk, chunk, 3)))
    return levels


def slide_scale(slide) -> tuple[tuple[float, float], str]:
    """Level-0 ``(row, column)`` scale for viewers and its unit: µm/px when the slide knows its
    µm/px, else 1 pixel."""
    if slide.mpp is None:
        return (1.0, 1.0), "pixel"
    mx, my = slide.mpp
    return (float(my), float(mx)), "um"
