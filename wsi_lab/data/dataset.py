"""A torch ``Dataset`` over a TileTable that reads tile pixels lazily from the slides.

Importing this module imports torch (``pip install 'wsi-lab[torch]'``); ``wsi_lab.data`` only loads it
when :class:`TileDataset` is first used. Slides are opened on first use in each DataLoader worker
process (never shared across a fork) and kept in a small LRU.

A ``DataLoader`` with a batch size fetches whole batches through ``__getitems__``: the rows are read
by :class:`~wsi_lab.data.fast_loader.BatchReader` (each source tile decoded once, rows cut from it) and
converted as one array; in a DataLoader worker the batch is written straight into shared memory (as
``default_collate`` does), so handing it to the main process copies nothing. :func:`tile_loader` adds the :class:`~wsi_lab.data.fast_loader.LocalitySampler`
so that shuffled epochs keep that locality.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wsi_lab.data.fast_loader import AREA, BatchReader, LocalitySampler, WorkerBatches, source_groups
from wsi_lab.data.tile_reader import (
    TILE_COLUMNS,
    SlideCache,
    label_index_of,
    label_indices,
    read_tile,
    require_columns,
    slide_paths_of,
)
from wsi_lab.errors import InvalidParameterError, require

if TYPE_CHECKING:
    import torch
else:
    torch = require("torch", "torch", "TileDataset")  # an optional dependency: a clear error when missing

log = logging.getLogger(__name__)

__all__ = ["TileDataset", "tile_loader", "locality_sampler", "collate_tiles", "TileItems"]


class TileItems(list):
    """The items of one batch read by :meth:`TileDataset.__getitems__`, with the batch itself as read
    (``batch``: ``(images (B, 3, H, W), labels (B,))``) for :func:`collate_tiles`."""

    batch: tuple[torch.Tensor, torch.Tensor] | None = None


def _new_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; with ``shared``, in shared memory (as ``default_collate`` allocates batches in
    a DataLoader worker), so that sending it to the main process does not copy it there first."""
    if not shared:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    proto = torch.empty(0, dtype=dtype)
    return proto.new(proto._typed_storage()._new_shared(numel)).view(shape)


def collate_tiles(items):
    """``collate_fn`` for TileDataset batches: the batch as read when ``items`` came from
    :meth:`TileDataset.__getitems__` (no per-item stacking), else ``default_collate``."""
    batch = getattr(items, "batch", None)
    if batch is not None:
        return list(batch)
    return torch.utils.data.default_collate(items)


class TileDataset(torch.utils.data.Dataset):
    """Map-style dataset: item ``i`` is ``(image, label)`` for row ``i`` of ``table``.

    ``image`` is a (C, H, W) tensor of the tile (``read_size``² pixels read at ``level`` from level-0
    ``(x, y)``, resized to ``tile_size``²): float32 in [0, 1] (``dtype="float32"``) or uint8
    (``dtype="uint8"``), then passed through ``transform`` when given. ``label`` is the int class index
    from the table's ``label_index`` (-1 when the table has no ``label_column``). Slide paths come from
    ``table.attrs["wsi_lab"]["slides"]`` or ``slide_paths``. Safe with ``DataLoader(num_workers>0)``."""

    def __init__(self, table: pd.DataFrame, transform: Callable | None = None,
                 slide_paths: Mapping[str, str] | None = None, label_column: str = "label",
                 dtype: str = "float32", cache_size: int = 32, backend: str = "auto") -> None:
        if dtype not in ("float32", "uint8"):
            raise InvalidParameterError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
        require_columns(table, TILE_COLUMNS, "TileDataset")
        self.transform = transform
        self.dtype = dtype
        self.label_column = label_column
        self.slide_paths = slide_paths_of(table, slide_paths)
        self.label_index = label_index_of(table, label_column)
        self.labels = label_indices(table, label_column)
        # plain arrays (not the DataFrame): cheap to pickle into worker processes
        self._slide_ids = table["slide_id"].astype(str).to_numpy()
        self._geom = np.stack([table[c].to_numpy(np.int64) for c in ("x", "y", "level", "read_size", "tile_size")], 1)
        self._cache = SlideCache(cache_size, backend)
        self._backend = backend
        self._batch = BatchReader(self._slide_ids, self._geom, self.slide_paths, self._cache)
        self._groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._slide_ids)

    def read(self, index: int) -> np.ndarray:
        """The tile of row ``index`` as (H, W, 3) uint8, before conversion and transform."""
        x, y, level, read_size, tile_size = self._geom[index]
        slide = self._cache.get(self.slide_paths[self._slide_ids[index]])
        return read_tile(slide, x, y, level, read_size, tile_size)

    def __getitem__(self, index: int):
        n = len(self)
        if isinstance(index, (torch.Tensor, np.integer)):
            index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a TileDataset of {n} tiles")
        index %= n
        tile = self.read(index)
        if not (tile.flags.writeable and tile.flags.c_contiguous):
            tile = np.array(tile, copy=True, order="C")  # torch wants a writable buffer
        image = torch.from_numpy(tile).permute(2, 0, 1).contiguous()
        if self.dtype == "float32":
            image = image.to(torch.float32).div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def read_batch(self, indices) -> np.ndarray:
        """Rows ``indices`` as one ``(B, H, W, 3)`` uint8 array (each source tile decoded once)."""
        return self._batch.read_batch(self._positions(indices))

    def _positions(self, indices) -> np.ndarray:
        n = len(self)
        idx = np.asarray([int(i) for i in indices], np.int64)
        bad = idx[(idx < -n) | (idx >= n)]
        if len(bad):
            raise IndexError(f"index {int(bad[0])} out of range for a TileDataset of {n} tiles")
        return idx % max(n, 1)

    def __getitems__(self, indices) -> list:
        """The items of ``indices`` (what ``DataLoader`` asks for a batch), read and converted as one batch.
        A list of ``(image, label)`` so that any ``collate_fn`` works; :func:`collate_tiles` instead takes
        the whole batch as it was read (``.batch``), with no per-item copy."""
        idx = self._positions(indices)
        size = self._batch.tile_size_of(idx)
        shape = (len(idx), size, size, 3)
        shared = self.transform is None and torch.utils.data.get_worker_info() is not None
        # (B, H, W, 3) -> a (B, 3, H, W) view with channels-last strides: no transposing copy (convolutions
        # run faster on channels-last input anyway)
        if self.dtype == "uint8":
            images = _new_tensor(shape, torch.uint8, shared)
            self._batch.read_batch(idx, images.numpy())
            images = images.permute(0, 3, 1, 2)
        else:
            images = _new_tensor(shape, torch.float32, shared)
            # numpy's uint8 -> float32 division gives exactly torch's ``.to(float32).div_(255)`` (IEEE division
            # of each of the 256 values, tested) at a quarter of its CPU time
            np.divide(self._batch.read_batch(idx), np.float32(255.0), out=images.numpy(), dtype=np.float32)
            images = images.permute(0, 3, 1, 2)
        labels = self.labels[idx]
        items = list(images.unbind(0))
        if self.transform is not None:
            return [(self.transform(im), int(lab)) for im, lab in zip(items, labels.tolist())]
        out = TileItems(zip(items, labels.tolist()))
        out.batch = (images, torch.from_numpy(labels.copy()))
        return out

    def source_groups(self) -> np.ndarray:
        """The source-tile group id of every row (:func:`wsi_lab.data.fast_loader.source_groups`; computed once)."""
        if self._groups is None:
            self._groups = source_groups(self._slide_ids, self._geom, self.slide_paths, self._backend)
        return self._groups

    @property
    def open_slides(self) -> int:
        """Number of slides currently open in this process."""
        return len(self._cache)

    @property
    def classes(self) -> list[str]:
        """Class names ordered by index."""
        return [k for k, _ in sorted(self.label_index.items(), key=lambda kv: kv[1])]

    def close(self) -> None:
        """Close the slides this process opened."""
        self._batch.close()
        self._cache.close()

    def __repr__(self) -> str:
        return (f"<TileDataset {len(self)} tiles from {len(self.slide_paths)} slide(s), classes={self.classes}, "
                f"pid={os.getpid()}>")


def locality_sampler(dataset, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                     window: int = 4, drop_last: bool = False, area: int = AREA) -> LocalitySampler:
    """A :class:`~wsi_lab.data.fast_loader.LocalitySampler` over a :class:`TileDataset` or a
    ``torch.utils.data.Subset`` of one (its indices are the subset's positions)."""
    base, positions = dataset, None
    if isinstance(dataset, torch.utils.data.Subset):
        base, positions = dataset.dataset, np.asarray(dataset.indices, np.int64)
    if not isinstance(base, TileDataset):
        raise InvalidParameterError(f"a locality sampler needs a TileDataset (or a Subset of one), got "
                                    f"{type(base).__name__}")
    groups = base.source_groups()
    return LocalitySampler(groups if positions is None else groups[positions], shuffle=shuffle, seed=seed,
                           num_replicas=num_replicas, rank=rank, window=window, drop_last=drop_last, area=area)


def tile_loader(dataset, batch_size: int = 128, shuffle: bool = True, seed: int = 0, num_workers: int = 0,
                num_replicas: int = 1, rank: int = 0, drop_last: bool = False, area: int = AREA,
                **kwargs) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over a :class:`TileDataset` (or a Subset of one) that reads batches with each source
    tile decoded about once per epoch: the locality sampler (shuffled by ``seed``; call
    ``loader.batch_sampler.set_epoch(e)`` each epoch), batches laid out so that each worker reads its own
    stretch of the epoch (:class:`~wsi_lab.data.fast_loader.WorkerBatches`), batch reads and
    :func:`collate_tiles`. ``kwargs`` go to ``DataLoader`` (``pin_memory``, ``persistent_workers``, ...)."""
    sampler = locality_sampler(dataset, shuffle, seed, num_replicas, rank, drop_last=drop_last, area=area)
    kwargs.setdefault("collate_fn", collate_tiles)
    return torch.utils.data.DataLoader(dataset, batch_sampler=WorkerBatches(sampler, batch_size, num_workers, drop_last),
                                       num_workers=num_workers, **kwargs)
