"""A torch ``Dataset`` over a TileTable that reads tile pixels lazily from the slides.

Importing this module imports torch (``pip install 'wsi-lab[torch]'``); ``wsi_lab.data`` only loads it
when :class:`TileDataset` is first used. Slides are opened on first use in each DataLoader worker
process (never shared across a fork) and kept in a small LRU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

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

__all__ = ["TileDataset"]


class TileDataset(torch.utils.data.Dataset):
    """Map-style dataset: item ``i`` is ``(image, label)`` for row ``i`` of ``table``.

    ``image`` is a (C, H, W) tensor of the tile (``read_size``² pixels read at ``level`` from level-0
    ``(x, y)``, resized to ``tile_size``²): float32 in [0, 1] (``dtype="float32"``) or uint8
    (``dtype="uint8"``), then passed through ``transform`` when given. ``label`` is the int class index
    from the table's ``label_index`` (-1 when the table has no ``label_column``). Slide paths come from
    ``table.attrs["wsi_lab"]["slides"]`` or ``slide_paths``. Safe with ``DataLoader(num_workers>0)``."""

    def __init__(self, table: pd.DataFrame, transform: Callable | None = None,
                 slide_paths: Mapping[str, str] | None = None, label_column: str = "label",
                 dtype: str = "float32", cache_size: int = 8, backend: str = "auto") -> None:
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
        self._cache.close()

    def __repr__(self) -> str:
        return (f"<TileDataset {len(self)} tiles from {len(self.slide_paths)} slide(s), classes={self.classes}, "
                f"pid={os.getpid()}>")
