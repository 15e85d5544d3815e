"""What a reviewer looks at next: the highest- and lowest-scoring tiles of a column, the nearest
neighbours of a tile in latent or feature space (scikit-learn's ``NearestNeighbors``; faiss where
installed), and the tile pictures of a gallery read straight from the slides."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from wsi_lab.errors import InvalidParameterError

if TYPE_CHECKING:
    from wsi_lab.data.tile_reader import SlideCache

log = logging.getLogger(__name__)

__all__ = ["top_tiles", "feature_columns", "NeighbourIndex", "tile_images", "score_column"]


def score_column(table: pd.DataFrame) -> str:
    """The column a gallery ranks by when none is named: the last ``prob_<class>`` (the positive class of a
    binary model), else ``attention``, else ``recon_error``."""
    probs = [c for c in table.columns if str(c).startswith("prob_")]
    for c in (probs[-1:] or []) + ["attention", "recon_error"]:
        if c in table.columns:
            return str(c)
    raise InvalidParameterError(f"no score column (prob_<class>, attention, recon_error) to rank tiles by; "
                                f"columns are {list(table.columns)}")


def top_tiles(table: pd.DataFrame, column: str | None = None, n: int = 12, lowest: bool = False) -> pd.DataFrame:
    """The ``n`` rows of ``table`` with the highest (or, with ``lowest``, the lowest) ``column``, best
    first; missing values are never chosen. Ties keep table order."""
    column = column or score_column(table)
    if column not in table.columns:
        raise InvalidParameterError(f"no column {column!r} to rank tiles by; columns are {list(table.columns)}")
    if n < 0:
        raise InvalidParameterError(f"n must be >= 0, got {n}")
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
    ok = np.flatnonzero(np.isfinite(values))
    keys = values[ok] if lowest else -values[ok]
    order = ok[np.argsort(keys, kind="stable")[:n]]
    return table.iloc[order]


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The latent (``z_NN``) columns of a table, else its feature columns (``feat_NN``/``f_NN``), in order."""
    for prefix in ("z_", "feat_", "f_"):
        cols = [c for c in table.columns if str(c).startswith(prefix) and str(c)[len(prefix):].isdigit()]
        if cols:
            return sorted(cols, key=lambda c: int(str(c)[len(prefix):]))
    raise InvalidParameterError("no latent (z_NN) or feature (feat_NN) columns: predict with a VAE first, or name "
                                f"the columns; the table has {list(table.columns)}")


class NeighbourIndex:
    """Nearest neighbours of tiles in latent or feature space (Euclidean). Built once per table with faiss
    (``IndexFlatL2``) when installed, else scikit-learn's ``NearestNeighbors``; ``backend`` forces one."""

    def __init__(self, table: pd.DataFrame, columns: Sequence[str] | None = None, backend: str = "auto") -> None:
        self.columns = list(columns) if columns else feature_columns(table)
        missing = [c for c in self.columns if c not in table.columns]
        if missing:
            raise InvalidParameterError(f"no column(s) {missing} in the table")
        if not len(table):
            raise InvalidParameterError("cannot index an empty table")
        self.table = table
        self._x = np.ascontiguousarray(table[self.columns].to_numpy(np.float32))
        if backend not in ("auto", "faiss", "sklearn"):
            raise InvalidParameterError(f"backend must be 'auto', 'faiss' or 'sklearn', got {backend!r}")
        self.backend = backend
        self._index: Any = None
        if backend in ("auto", "faiss"):
            try:
                import faiss
            except ImportError:
                if backend == "faiss":
                    from wsi_lab.errors import MissingDependencyError

                    raise MissingDependencyError("faiss", "faiss-cpu", "a faiss neighbour index") from None
            else:
                self._index = faiss.IndexFlatL2(self._x.shape[1])
                self._index.add(self._x)
                self.backend = "faiss"
        if self._index is None:
            from wsi_lab.errors import require

            neighbors = require("sklearn.neighbors", "train", "nearest-neighbour galleries")
            self._index = neighbors.NearestNeighbors().fit(self._x)
            self.backend = "sklearn"

    def query(self, position: int, k: int = 12, include_self: bool = False) -> pd.DataFrame:
        """The ``k`` tiles nearest to the tile at ``position`` (0-based row of the table), nearest first, with
        a ``distance`` column; the tile itself is left out unless ``include_self``."""
        if not 0 <= int(position) < len(self._x):
            raise InvalidParameterError(f"tile position {position} is outside the table (0..{len(self._x) - 1})")
        want = min(len(self._x), int(k) + (0 if include_self else 1))
        q = self._x[int(position):int(position) + 1]
        if self.backend == "faiss":
            d2, idx = self._index.search(q, want)
            dist, idx = np.sqrt(np.clip(d2[0], 0, None)), idx[0]
        else:
            dist, idx = self._index.kneighbors(q, want)
            dist, idx = dist[0], idx[0]
        keep = np.ones(len(idx), bool) if include_self else idx != int(position)
        idx, dist = idx[keep][:k], dist[keep][:k]
        out = self.table.iloc[idx].copy()
        out["distance"] = dist.astype(np.float32)
        return out


def tile_images(rows: pd.DataFrame, size: int = 96, slide_paths: dict[str, str] | None = None,
                cache: SlideCache | None = None) -> list[np.ndarray]:
    """The tiles of ``rows`` read from their slides (paths from the table's metadata, or ``slide_paths``) and
    resized to ``size``×``size``; (size, size, 3) uint8 each. A slide opens once for all its rows; with a
    ``cache`` (a caller's :class:`~wsi_lab.data.tile_reader.SlideCache`, left open) once for all calls."""
    from wsi_lab.data.tile_reader import SlideCache, read_tile, slide_paths_of

    if not len(rows):
        return []
    paths = slide_paths_of(rows, slide_paths)
    own = cache is None
    cache = SlideCache(maxsize=4) if cache is None else cache

    def column(name: str, default: int) -> np.ndarray:
        return rows[name].to_numpy(np.int64) if name in rows.columns else np.full(len(rows), default, np.int64)

    levels = column("level", 0)
    reads = column("read_size" if "read_size" in rows.columns else "tile_size", size)
    try:
        return [read_tile(cache.get(paths[slide]), int(x), int(y), int(level), int(read), size)
                for slide, x, y, level, read in zip(rows["slide_id"].astype(str), rows["x"].to_numpy(np.int64),
                                                    rows["y"].to_numpy(np.int64), levels, reads)]
    finally:
        if own:
            cache.close()
