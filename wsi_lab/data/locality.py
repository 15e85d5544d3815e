"""Which source-tile block each TileTable row belongs to, and orders of rows that keep that locality
while still shuffling (the read side is :mod:`wsi_lab.data.fast_loader`).

:func:`source_groups` gives each row the id of the block of source tiles holding its top-left corner
(a virtual 256-px grid where the level has no tile grid; a block spans at least 2 tiles and 7 rows'
read size, so a group holds ~50 rows at 64² and at 224² alike), numbered in Hilbert order within each
slide level (consecutive ids are neighbouring blocks). :class:`LocalitySampler` shuffles areas of a few
consecutive groups, lays them end to end and splits that into ``window`` streams; each window takes
the next group of every stream and shuffles its rows: batches still mix ``window`` groups from random
areas, yet a worker decodes each source tile about once per epoch, including the tiles on a border
between two groups (rows reach into the right and lower neighbour's tiles), since the stream's next
group is mostly that neighbour and the LRU still holds them. It shards like PyTorch's
``DistributedSampler`` (pad to a multiple of ``num_replicas``, rank ``r`` takes every N-th index), so
N processes together see the batches one process sees.

:class:`WorkerBatches` cuts that order into DataLoader batches so each worker reads one stretch of it.
Importing this module does not import torch; :class:`LocalitySampler` is a plain iterable that
``DataLoader(sampler=...)`` accepts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError

__all__ = ["LevelGrid", "level_grid", "source_groups", "hilbert_index", "LocalitySampler", "WorkerBatches",
           "VIRTUAL_GRID", "REGION", "GROUP_ROWS", "AREA"]

#: the grid (level pixels) used to group rows of levels that have no tile grid of their own
VIRTUAL_GRID = 256
#: rows are grouped by blocks of at least REGION x REGION source tiles ...
REGION = 2
#: ... and at least GROUP_ROWS x GROUP_ROWS rows' read size (so a group holds ~50 rows whatever the tile
#: size: 2 x 2 tiles of 240 px hold 56 rows of 64 px, but only 4 of 224 px, and rows that straddle a group's
#: border decode the neighbour's tiles again; large tiles need larger blocks)
GROUP_ROWS = 7
#: neighbouring groups per area of the locality sampler (a run of the Hilbert curve: 4 groups are 2 x 2 blocks)
AREA = 4


class LevelGrid:
    """The tile grid of one slide level as the batch reader needs it (level pixels)."""

    __slots__ = ("ds", "tw", "th", "width", "height", "across", "decode")

    def __init__(self, ds: float, tw: int, th: int, width: int, height: int, across: int, decode: Any) -> None:
        self.ds, self.tw, self.th, self.width, self.height, self.across = ds, tw, th, width, height, across
        self.decode = decode  # decode(index, out=None) -> (th, tw, 3) uint8, or None: no raw tile access


def level_grid(slide: Any, level: int) -> LevelGrid:
    """The tile grid of ``slide``'s ``level``: its raw tiles' where the reader can decode them, else a
    :data:`VIRTUAL_GRID` grid without ``decode``."""
    from wsi_lab.slide.raw_tiles import raw_level

    ds = float(slide.level_downsamples[level])
    width, height = slide.level_dimensions[level]
    rl = raw_level(slide, level)
    if rl is None or rl.decode is None:
        across = -(-int(width) // VIRTUAL_GRID)
        return LevelGrid(ds, VIRTUAL_GRID, VIRTUAL_GRID, int(width), int(height), across, None)
    return LevelGrid(ds, rl.tile_width, rl.tile_height, rl.width, rl.height, rl.across, rl.decode)


def source_groups(slide_ids: np.ndarray, geom: np.ndarray, slide_paths: Mapping[str, str],
                  backend: str = "auto", region: int = REGION) -> np.ndarray:
    """Group id (0..G-1) of every row: rows whose top-left corner lies in the same block of source tiles
    of the same slide level share an id. A block is at least ``region``×``region`` source tiles and at
    least :data:`GROUP_ROWS` rows' ``read_size`` across (whole tiles), so that rows straddling a tile
    border mostly find both tiles in their own group, and each group holds tens of rows. ``geom`` is ``(N, 5)``
    int: level-0 ``x, y``, ``level``, ``read_size``, ``tile_size``. Opens each slide once (and closes it)."""
    from wsi_lab.slide import open_slide

    n = len(slide_ids)
    keys = np.zeros((n, 4), np.int64)
    sids, sid_codes = np.unique(np.asarray(slide_ids).astype(str), return_inverse=True)
    for code, sid in enumerate(sids):
        rows = np.flatnonzero(sid_codes == code)
        with open_slide(slide_paths[str(sid)], backend=backend) as slide:
            for level in np.unique(geom[rows, 2]):
                sel = rows[geom[rows, 2] == level]
                g = level_grid(slide, int(level))
                span = GROUP_ROWS * int(geom[sel, 3].max())  # level pixels covered by GROUP_ROWS rows
                bw, bh = g.tw * max(region, -(-span // g.tw)), g.th * max(region, -(-span // g.th))
                keys[sel, 0], keys[sel, 1] = code, level
                keys[sel, 2] = np.floor(geom[sel, 1] / g.ds).astype(np.int64) // bh
                keys[sel, 3] = np.floor(geom[sel, 0] / g.ds).astype(np.int64) // bw
    if n == 0:
        return np.zeros(0, np.int64)
    # ids in Hilbert order of the blocks within each slide level: consecutive ids are (mostly) neighbours
    keys[:, 2] = hilbert_index(keys[:, 3], keys[:, 2])
    _, ids = np.unique(keys[:, :3], axis=0, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def hilbert_index(x: np.ndarray, y: np.ndarray, order: int = 16) -> np.ndarray:
    """Position of each grid cell ``(x, y)`` (ints in ``0..2**order-1``) along the Hilbert curve: cells
    with consecutive positions are edge neighbours, and any run of positions covers a compact area."""
    x, y = np.asarray(x, np.int64).copy(), np.asarray(y, np.int64).copy()
    d = np.zeros(x.shape, np.int64)
    n = 1 << order
    s = n >> 1
    while s > 0:
        rx, ry = (x & s) > 0, (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = rx & ~ry
        x, y = np.where(flip, n - 1 - x, x), np.where(flip, n - 1 - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= 1
    return d


class LocalitySampler:
    """Indices ``0..len(groups)-1`` in an order that keeps source-tile locality (module docstring).

    ``groups``: the group id of each index (:func:`source_groups`: consecutive ids are neighbouring blocks).
    With ``shuffle`` the groups are cut into areas of ``area`` consecutive ids (compact: a run of the
    Hilbert curve), the areas shuffled (seeded by ``seed`` and the epoch of :meth:`set_epoch`) and laid end
    to end, and that sequence is split into ``window`` streams; window ``j`` takes the ``j``-th group of
    every stream, and its rows are shuffled. So each window still mixes ``window`` groups from different
    random areas (slides), while the next window takes each stream's next group, a neighbour of the one
    before: the source tiles on their shared border are still in the reader's LRU. ``area=1`` shuffles
    the groups freely. Without ``shuffle`` the order is by group. Sharded over ``num_replicas`` like
    ``DistributedSampler`` (padded by repeating the first indices unless ``drop_last``)."""

    def __init__(self, groups: np.ndarray, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 window: int = 4, drop_last: bool = False, area: int = AREA) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise InvalidParameterError(f"rank {rank} of num_replicas {num_replicas} is not valid")
        if window < 1:
            raise InvalidParameterError(f"window must be >= 1 group, got {window}")
        if area < 1:
            raise InvalidParameterError(f"area must be >= 1 group, got {area}")
        self.groups = np.asarray(groups, np.int64)
        self.shuffle, self.seed, self.window, self.drop_last = shuffle, int(seed), int(window), drop_last
        self.area = int(area)
        self.num_replicas, self.rank, self.epoch = int(num_replicas), int(rank), 0
        n = len(self.groups)
        self.num_samples = n // self.num_replicas if drop_last else -(-n // self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> np.ndarray:
        """The whole epoch's order over all replicas (before sharding and padding)."""
        n = len(self.groups)
        by_group = np.argsort(self.groups, kind="stable")
        if not self.shuffle or n == 0:
            return by_group
        rng = np.random.default_rng([self.seed, self.epoch])
        g_sorted = self.groups[by_group]
        starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
        bounds = np.r_[starts, n]
        n_groups = len(starts)
        seq = (rng.permutation(n_groups) if self.area == 1 else
               np.concatenate([np.arange(a, min(a + self.area, n_groups))
                               for a in rng.permutation(np.arange(0, n_groups, self.area))]))
        streams = np.array_split(seq, min(self.window, n_groups))
        out = np.empty(n, np.int64)
        pos = 0
        for j in range(len(streams[0])):
            chunk = np.concatenate([by_group[bounds[st[j]]:bounds[st[j] + 1]] for st in streams if j < len(st)])
            out[pos:pos + len(chunk)] = chunk[rng.permutation(len(chunk))]
            pos += len(chunk)
        return out

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        total = self.num_samples * self.num_replicas
        if len(order) and total > len(order):
            order = np.concatenate([order, np.resize(order, total - len(order))])
        order = order[:total]
        return iter(order[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class WorkerBatches:
    """Batches of a :class:`LocalitySampler`'s order, handed out so that each of ``num_workers``
    DataLoader workers gets one contiguous stretch of the epoch. ``DataLoader`` gives batch ``k`` to
    worker ``k % num_workers``; cut into plain consecutive batches, neighbouring batches (which share
    source tiles) would go to different workers and every worker would decode those tiles again. Here
    the batches of worker ``w`` are the ``w``-th stretch, interleaved in delivery order, so each source
    tile is decoded by one worker, about once per epoch. A ``batch_sampler`` for ``DataLoader``."""

    def __init__(self, sampler: LocalitySampler, batch_size: int, num_workers: int = 0, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise InvalidParameterError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.batch_size = sampler, int(batch_size)
        self.num_workers, self.drop_last = max(1, int(num_workers)), drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _batches(self) -> list[list[int]]:
        order = list(self.sampler)
        b = self.batch_size
        batches = [order[i:i + b] for i in range(0, len(order), b)]
        if self.drop_last and batches and len(batches[-1]) < b:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        w = self.num_workers
        if w == 1:
            return iter(batches)
        bounds = np.linspace(0, len(batches), w + 1).round().astype(int)
        stretches = [batches[bounds[k]:bounds[k + 1]] for k in range(w)]
        out = [st[j] for j in range(max(map(len, stretches), default=0)) for st in stretches if j < len(st)]
        return iter(out)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
