"""The latent explorer's core: a 2-D embedding of latents or features (PCA, or UMAP when installed; the
same :func:`~wsi_lab.overlays.predictions.project_latents` the latent overlays use) and the two
directions of brushing: points → the tiles of one slide, a slide region → the points."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from wsi_lab.errors import InvalidParameterError

__all__ = ["embed", "cluster_labels", "SlidePoints", "points_in_region", "EMBED_X", "EMBED_Y", "CLUSTER"]

EMBED_X, EMBED_Y, CLUSTER = "embed_x", "embed_y", "cluster"


def embed(table: pd.DataFrame, columns: Sequence[str] | None = None, method: str = "pca", seed: int = 0,
          clusters: int | None = 6) -> pd.DataFrame:
    """``table`` (positional index 0..N-1) with ``embed_x``/``embed_y``, the 2-D embedding of its latent or
    feature ``columns`` (default: :func:`~wsi_lab.review.feature_columns`), and, unless ``clusters`` is
    None, ``cluster``: k-means labels (as strings, for colouring) of the same columns."""
    from wsi_lab.overlays.predictions import project_latents
    from wsi_lab.review.galleries import feature_columns

    cols = list(columns) if columns else feature_columns(table)
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise InvalidParameterError(f"no column(s) {missing} to embed; columns are {list(table.columns)}")
    if not len(table):
        raise InvalidParameterError("nothing to embed: the table is empty")
    x = table[cols].to_numpy(np.float32)
    xy = project_latents(x, method, seed, n_components=2)
    out = table.reset_index(drop=True)  # a new frame (the columns added below do not reach `table`)
    out.attrs = table.attrs
    out[EMBED_X], out[EMBED_Y] = xy[:, 0], xy[:, 1]
    if clusters:
        out[CLUSTER] = _clusters(x, int(clusters), seed)
    return out


def _clusters(x: np.ndarray, clusters: int, seed: int) -> Any:
    """k-means labels as a categorical of ``c0``.. (numbered by size)."""
    from wsi_lab.overlays.predictions import kmeans

    k = min(int(clusters), len(x))
    return pd.Categorical.from_codes(kmeans(x, k, seed), categories=pd.Index([f"c{i}" for i in range(k)]))


def cluster_labels(table: pd.DataFrame, columns: Sequence[str] | None = None, clusters: int = 6,
                   seed: int = 0) -> Any:
    """The ``cluster`` column :func:`embed` adds (k-means labels ``c0``.. of the same ``columns``), on its own."""
    from wsi_lab.review.galleries import feature_columns

    cols = list(columns) if columns else feature_columns(table)
    return _clusters(table[cols].to_numpy(np.float32), clusters, seed)


class SlidePoints:
    """The tiles of one slide among the points (rows, by position) of a table, indexed once: a selection of
    points → those on this slide and their level-0 boxes (what the slide's viewer draws, from
    :func:`~wsi_lab.review.layers.highlight_boxes`) in a few microseconds, however wide the table is."""

    def __init__(self, table: pd.DataFrame, slide_id: str) -> None:
        from wsi_lab.review.layers import highlight_boxes

        self.on = table["slide_id"].astype(str).to_numpy() == str(slide_id)  # the rows of this slide's tiles
        self.count = len(table)
        self.boxes = np.full((self.count, 4), np.nan, np.float32)  # NaN: a tile of another slide
        if self.on.any():
            self.boxes[self.on] = highlight_boxes(table[self.on])

    def positions(self, points: Sequence[int] | np.ndarray) -> np.ndarray:
        """The positions among ``points`` (0-based rows of the table) of this slide's tiles, in their order."""
        idx = np.asarray(points, np.int64).ravel()
        if len(idx) and (idx.min() < 0 or idx.max() >= self.count):
            raise InvalidParameterError(f"point positions must be in 0..{self.count - 1}")
        return idx[~np.isnan(self.boxes[idx, 0])]

    def boxes_of(self, positions: np.ndarray) -> np.ndarray:
        """The ``(N, 4)`` float32 level-0 boxes ``[x, y, width, height]`` of ``positions`` (from :meth:`positions`)."""
        return self.boxes[positions]


def points_in_region(table: pd.DataFrame, polygon: Sequence[Sequence[float]], slide_id: str) -> np.ndarray:
    """Positions (0-based rows of ``table``) of the tiles of ``slide_id`` whose centre is inside ``polygon``
    (level-0 vertices); a rectangle ``(x, y, w, h)`` is taken as its four corners."""
    from wsi_lab.review.decisions import tiles_in_polygon

    poly: list = list(polygon)
    if len(poly) == 4 and all(np.isscalar(v) for v in poly):
        x, y, w, h = (float(v) for v in poly)
        poly = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    positional = table.reset_index(drop=True)
    positional.attrs = table.attrs
    return tiles_in_polygon(positional, poly, slide_id).index.to_numpy(np.int64)
