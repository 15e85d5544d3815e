"""Batch reads of TileTable rows that decode each source (slide-level) tile once; the order that keeps
that locality while still shuffling (:class:`LocalitySampler`, :class:`WorkerBatches`, :func:`source_groups`)
is :mod:`wsi_lab.data.locality`, its names importable from here too.

A slide level stored as JPEG tiles (240² on Aperio scans, 256² or 512² elsewhere) holds many output
tiles: ~14 tiles of 64² per 240² source tile. Reading rows one by one decodes (or looks up) the source
tile again for every row and pays the per-item cost of ``read_region`` and of the DataLoader. Here:

- :class:`BatchReader` reads a batch of rows into one ``(B, T, T, 3) uint8`` array. Rows are taken in
  source-tile order; each source tile the batch needs is decoded once (the reader's own decode of the
  whole tile, :attr:`wsi_lab.slide.raw_tiles.RawTileLevel.decode`, imagecodecs straight from the file)
  and kept in a small per-process LRU, and every row is cut from it (from up to four of them when it
  straddles a tile border). Rows on levels without raw tile access (other backends, non-JPEG levels)
  or reaching past the level's edge go through :func:`~wsi_lab.data.tile_reader.read_tile`. Either way
  the pixels equal :func:`read_tile`'s (tested).

Importing this module does not import torch.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image

from wsi_lab.data.locality import (
    AREA,
    GROUP_ROWS,
    REGION,
    VIRTUAL_GRID,
    LevelGrid,
    LocalitySampler,
    WorkerBatches,
    hilbert_index,
    level_grid,
    source_groups,
)
from wsi_lab.data.tile_reader import SlideCache, read_tile
from wsi_lab.errors import InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["BatchReader", "LocalitySampler", "WorkerBatches", "source_groups", "hilbert_index", "VIRTUAL_GRID",
           "REGION", "GROUP_ROWS", "AREA", "TILE_CACHE_BYTES"]

#: decoded source tiles kept per process (bytes)
TILE_CACHE_BYTES = 96 * 2**20


class _TileLRU:
    """Decoded source tiles of one process, least recently used dropped past ``max_bytes``. Lean on
    purpose (one process, one thread: no locks, O(1) per step): a batch of 224² rows looks up ~4 tiles
    per row, and :class:`wsi_lab.io.LRUCache`'s thread-safe bookkeeping cost a tenth of a decode each."""

    __slots__ = ("max_bytes", "nbytes", "misses", "_data", "_spare")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.nbytes, self.misses = int(max_bytes), 0, 0  # misses: decodes so far
        self._data: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._spare: list[np.ndarray] = []  # arrays dropped from the LRU, decoded into again (pages already faulted)

    def get_or_load(self, key: tuple[str, int, int], load: Callable[[np.ndarray | None], np.ndarray]) -> np.ndarray:
        """The tile of ``key``; on a miss ``load(buffer)`` decodes it, into ``buffer`` (a dropped tile's array,
        or None) where it can. Callers must not hold a tile across a later miss: its array may be reused."""
        tile = self._data.get(key)
        if tile is not None:
            self._data.move_to_end(key)
            return tile
        tile = load(self._spare.pop() if self._spare else None)
        self.misses += 1
        self._data[key] = tile
        self.nbytes += tile.nbytes
        while self.nbytes > self.max_bytes and len(self._data) > 1:
            dropped = self._data.popitem(last=False)[1]
            self.nbytes -= dropped.nbytes
            if len(self._spare) < 4 and dropped.flags.writeable and dropped.flags.c_contiguous:
                self._spare.append(dropped)
        return tile

    def clear(self) -> None:
        self._data.clear()
        self._spare.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._data)


class BatchReader:
    """Reads batches of rows (module docstring). Holds plain arrays and a :class:`SlideCache`, so it
    pickles cheaply into DataLoader workers; each process opens its own slides and keeps its own LRU of
    decoded source tiles."""

    def __init__(self, slide_ids: np.ndarray, geom: np.ndarray, slide_paths: Mapping[str, str],
                 cache: SlideCache, tile_cache_bytes: int = TILE_CACHE_BYTES) -> None:
        self._slide_ids = slide_ids
        self._geom = geom
        self.slide_paths = dict(slide_paths)
        self._cache = cache
        self._tile_cache_bytes = int(tile_cache_bytes)
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._last: tuple[tuple[str, int, int], np.ndarray] | None = None  # rows come in tile order: skip the LRU
        self._grids: dict[tuple[str, int], tuple[Any, LevelGrid]] = {}
        self._tiles = _TileLRU(self._tile_cache_bytes)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_grids", None)
        state.pop("_tiles", None)
        state.pop("_last", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    def _grid(self, path: str, level: int) -> tuple[Any, LevelGrid]:
        slide = self._cache.get(path)
        key = (path, level)
        held = self._grids.get(key)
        # a grid decodes through its slide's file descriptor: when the slide LRU closed and reopened the
        # slide, the old grid's descriptor is gone (or reused by another file), so build it again
        if held is None or held[0] is not slide:
            held = self._grids[key] = (slide, level_grid(slide, level))
        return slide, held[1]

    def _source(self, path: str, level: int, grid: LevelGrid, index: int) -> np.ndarray:
        key = (path, level, index)
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        self._last = None  # a miss may decode into the array of a dropped tile: hold none across it
        tile = self._tiles.get_or_load(key, lambda buf: grid.decode(index, out=buf))
        self._last = (key, tile)
        return tile

    def _cut(self, path: str, level: int, grid: LevelGrid, lx: int, ly: int, size: int,
             out: np.ndarray | None) -> np.ndarray:
        """The ``size``² box at level pixels ``(lx, ly)`` (inside the level) from the decoded source tiles."""
        tw, th = grid.tw, grid.th
        tx0, ty0 = lx // tw, ly // th
        tx1, ty1 = (lx + size - 1) // tw, (ly + size - 1) // th
        if tx0 == tx1 and ty0 == ty1:  # the usual case: one source tile holds the whole box
            tile = self._source(path, level, grid, ty0 * grid.across + tx0)
            oy, ox = ly - ty0 * th, lx - tx0 * tw
            piece = tile[oy:oy + size, ox:ox + size]
            if out is None:
                return piece
            out[...] = piece
            return out
        buf = out if out is not None else np.empty((size, size, 3), np.uint8)
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                tile = self._source(path, level, grid, ty * grid.across + tx)
                ox, oy = tx * tw, ty * th
                x0, y0 = max(lx, ox), max(ly, oy)
                x1, y1 = min(lx + size, ox + tw), min(ly + size, oy + th)
                buf[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = tile[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        return buf

    def read_into(self, index: int, out: np.ndarray, where: tuple[str, Any, LevelGrid] | None = None) -> None:
        """Write row ``index``'s ``(tile_size, tile_size, 3)`` uint8 pixels into ``out``. ``where``: the
        row's ``(path, slide, grid)`` when the caller has them (a batch reads them once per slide level)."""
        x, y, level, read_size, tile_size = self._geom[index].tolist()
        if where is None:
            path = self.slide_paths[str(self._slide_ids[index])]
            slide, grid = self._grid(path, level)
        else:
            path, slide, grid = where
        lx, ly = int(math.floor(x / grid.ds)), int(math.floor(y / grid.ds))
        inside = lx >= 0 and ly >= 0 and lx + read_size <= grid.width and ly + read_size <= grid.height
        if grid.decode is None or not inside:
            out[...] = read_tile(slide, x, y, level, read_size, tile_size)
            return
        if read_size == tile_size:
            self._cut(path, level, grid, lx, ly, read_size, out)
            return
        region = self._cut(path, level, grid, lx, ly, read_size, None)
        resample = Image.Resampling.BOX if read_size > tile_size else Image.Resampling.BILINEAR
        out[...] = np.asarray(Image.fromarray(np.ascontiguousarray(region)).resize((tile_size, tile_size), resample))

    def tile_size_of(self, indices: np.ndarray) -> int:
        """The one ``tile_size`` of rows ``indices`` (:class:`InvalidParameterError` when they mix sizes)."""
        sizes = np.unique(self._geom[indices, 4]) if len(indices) else np.array([0])
        if len(sizes) != 1:
            raise InvalidParameterError(f"a batch holds tiles of several sizes {sizes.tolist()}; use one tile_size "
                                        "per dataset or batch_size=1")
        return int(sizes[0])

    def read_batch(self, indices: list[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(B, T, T, 3)`` uint8 pixels of rows ``indices`` (all of one ``tile_size`` T), in the order given;
        read in source-tile order so each source tile is decoded once. ``out``: a ``(B, T, T, 3)`` uint8
        array to fill (e.g. in shared memory), else a new one."""
        idx = np.asarray(indices, np.int64)
        size = self.tile_size_of(idx)
        if out is None:
            out = np.empty((len(idx), size, size, 3), np.uint8)
        elif out.shape != (len(idx), size, size, 3) or out.dtype != np.uint8:
            raise InvalidParameterError(f"out must be a {(len(idx), size, size, 3)} uint8 array, got {out.shape} "
                                        f"{out.dtype}")
        g = self._geom[idx]
        sids = self._slide_ids[idx]
        order = np.lexsort((g[:, 0], g[:, 1], g[:, 2], sids))  # slide, level, y, x
        current: tuple[Any, int] | None = None
        where: tuple[str, Any, LevelGrid] | None = None
        for k in order.tolist():
            key = (sids[k], int(g[k, 2]))
            if key != current:
                path = self.slide_paths[str(key[0])]
                slide, grid = self._grid(path, key[1])
                current, where = key, (path, slide, grid)
            self.read_into(int(idx[k]), out[k], where)
        return out

    def close(self) -> None:
        self._last = None
        self._tiles.clear()
        self._grids.clear()
