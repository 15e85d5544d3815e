"""Reading the pixels of TileTable rows: slide path lookup, a per-process LRU of open slides, and
:func:`read_tile` (read ``read_size``² pixels at ``level`` from level-0 ``(x, y)``, resize to
``tile_size``²). Shared by the exports and the torch dataset."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from wsi_lab.data.table import table_meta
from wsi_lab.errors import DataError
from wsi_lab.io import LRUCache

if TYPE_CHECKING:
    from wsi_lab.slide import Slide

log = logging.getLogger(__name__)

__all__ = ["TILE_COLUMNS", "slide_paths_of", "SlideCache", "read_tile", "require_columns", "label_key", "label_index_of",
           "label_indices"]

TILE_COLUMNS = ("slide_id", "x", "y", "level", "read_size", "tile_size")


def require_columns(table: pd.DataFrame, columns, what: str) -> None:
    """Raise :class:`DataError` when ``table`` lacks any of ``columns`` (``what`` names the step)."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{what} needs a TileTable with columns {list(columns)}; missing {missing} "
                        f"(the table has {list(table.columns)})")


def slide_paths_of(table: pd.DataFrame, slide_paths: Mapping[str, str | os.PathLike] | None = None) -> dict[str, str]:
    """``{slide_id: path}`` for every slide in ``table``: from ``table.attrs["wsi_lab"]["slides"]``,
    overridden by the explicit ``slide_paths``. Raises :class:`DataError` listing slides without a path."""
    paths = _recorded_paths(table_meta(table))
    for sid, p in (slide_paths or {}).items():
        paths[str(sid)] = str(p)
    needed = sorted(map(str, pd.unique(table["slide_id"]))) if "slide_id" in table.columns else []
    missing = [s for s in needed if s not in paths]
    if missing:
        raise DataError(
            f"no slide path known for slide(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}; the table's "
            "metadata (attrs['wsi_lab']['slides'][slide_id]['path']) lacks them: pass slide_paths={slide_id: path}"
        )
    return {s: paths[s] for s in needed}


def _recorded_paths(meta: dict) -> dict[str, str]:
    """Slide paths recorded in TileTable metadata: ``slides[slide_id]["path"]`` (multi-slide tables)
    and ``slide_id`` + ``slide_path`` (a table straight from plan_tiles)."""
    paths: dict[str, str] = {}
    if meta.get("slide_id") and meta.get("slide_path"):
        paths[str(meta["slide_id"])] = str(meta["slide_path"])
    for sid, info in (meta.get("slides") or {}).items():
        if isinstance(info, dict) and info.get("path"):
            paths[str(sid)] = str(info["path"])
    return paths


class SlideCache:
    """A small LRU of open slides, keyed by path. It belongs to one process and one thread: after a
    fork (DataLoader workers) or in another thread it starts empty, so no file handle is shared."""

    def __init__(self, maxsize: int = 8, backend: str = "auto") -> None:
        self.maxsize = max(1, int(maxsize))
        self.backend = backend
        self._owner: tuple[int, int] | None = None
        self._slides: LRUCache[str, Slide] = self._new_lru()

    def _new_lru(self) -> LRUCache[str, Slide]:
        """A fresh LRU (its own lock too: one inherited over a fork may be held by a thread that is gone)."""
        return LRUCache(max_items=self.maxsize, sizeof=lambda _: 1, on_evict=lambda _, slide: slide.close())

    def get(self, path: str) -> Slide:
        """The open :class:`~wsi_lab.slide.Slide` for ``path`` (opened on first use)."""
        from wsi_lab.slide import open_slide

        owner = (os.getpid(), threading.get_ident())
        if owner != self._owner:
            self._slides = self._new_lru()  # inherited handles belong to the parent: never reuse them
            self._owner = owner
        slide = self._slides.get(path)
        if slide is not None:
            return slide
        slide = open_slide(path, backend=self.backend)
        self._slides.put(path, slide)
        return slide

    def __len__(self) -> int:
        return len(self._slides) if self._owner == (os.getpid(), threading.get_ident()) else 0

    def close(self) -> None:
        if self._owner == (os.getpid(), threading.get_ident()):
            for slide in self._slides.values():
                slide.close()
        self._slides = self._new_lru()

    def __getstate__(self) -> dict:
        return {"maxsize": self.maxsize, "backend": self.backend}

    def __setstate__(self, state: dict) -> None:
        self.maxsize, self.backend = state["maxsize"], state["backend"]
        self._owner = None
        self._slides = self._new_lru()


def read_tile(slide, x: int, y: int, level: int, read_size: int, tile_size: int) -> np.ndarray:
    """Read ``read_size``×``read_size`` pixels of ``level`` whose top-left is level-0 ``(x, y)`` and
    resize to ``tile_size``×``tile_size``; returns (H, W, 3) uint8."""
    arr = slide.read_region((int(x), int(y)), int(level), (int(read_size), int(read_size)))
    if int(read_size) != int(tile_size):
        resample = Image.Resampling.BOX if read_size > tile_size else Image.Resampling.BILINEAR
        arr = np.asarray(Image.fromarray(arr).resize((int(tile_size), int(tile_size)), resample))
    return arr


def label_key(value) -> str:
    """The string form of a label used as a class name (``3.0`` from a NaN-widened int column -> ``"3"``)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def label_index_of(table: pd.DataFrame, label_column: str = "label") -> dict[str, int]:
    """The ``{class name: index}`` mapping of a labelled table: ``attrs["wsi_lab"]["label_index"]`` when
    recorded (by :func:`~wsi_lab.data.labels.attach_labels`), else built from the sorted labels."""
    recorded = table_meta(table).get("label_index")
    if isinstance(recorded, dict) and recorded and label_column == "label":
        return {str(k): int(v) for k, v in recorded.items()}
    if label_column not in table.columns:
        return {}
    from wsi_lab.data.labels import make_label_index  # the one order rule (labels imports this module)

    return make_label_index(table[label_column])


def label_indices(table: pd.DataFrame, label_column: str = "label") -> np.ndarray:
    """Integer class index of every row (-1 where there is no label, or no label column)."""
    if label_column not in table.columns:
        return np.full(len(table), -1, np.int64)
    mapping = label_index_of(table, label_column)
    out = np.full(len(table), -1, np.int64)
    col = table[label_column]
    present = col.notna().to_numpy()
    if not present.any():
        return out
    codes, uniques = pd.factorize(col[present])  # one label_key per distinct value, not per row
    lookup = np.empty(len(uniques), np.int64)
    for j, v in enumerate(uniques):
        key = label_key(v)
        if key not in mapping:
            raise DataError(f"label {v!r} is not in the table's label_index {mapping}; re-run attach_labels")
        lookup[j] = mapping[key]
    out[present] = lookup[codes]
    return out
