"""Overlay layers of the review: the standing decisions of a slide (coloured by label), a highlight of
chosen tiles (brushed points, a gallery), both ordinary :class:`~wsi_lab.overlays.TileLayer`\\ s, and the
region being drawn (a :class:`~wsi_lab.overlays.MaskLayer`: its corners, edges and, from three corners on,
its inside)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wsi_lab.errors import InvalidParameterError
from wsi_lab.overlays import MaskLayer, TileLayer, category_layer, tile_extent

if TYPE_CHECKING:
    from wsi_lab.review.decisions import DecisionStore

__all__ = ["decisions_layer", "highlight_boxes", "highlight_layer", "region_layer"]

HIGHLIGHT_NAME = "selected tiles"
REGION_NAME = "drawn region"


def decisions_layer(store: DecisionStore, slide_id: str, classes: Sequence[str] = (), opacity: float = 0.6) -> TileLayer:
    """The standing decisions of ``slide_id`` coloured by label (``classes`` first, in that order, so a class
    keeps the colour of the prediction map)."""
    eff = store.effective(slide_id)
    labels = list(dict.fromkeys([*map(str, classes), *sorted(set(eff["label"].astype(str)))]))
    frame = pd.DataFrame({"x": eff["x"].to_numpy(float), "y": eff["y"].to_numpy(float),
                          "size0": eff["size"].fillna(1.0).to_numpy(float),
                          "label": pd.Categorical(eff["label"].astype(str), categories=labels)})
    return category_layer(frame, "label", opacity=opacity, name="decisions")


def highlight_boxes(rows: pd.DataFrame) -> np.ndarray:
    """The level-0 boxes ``(N, 4)`` float32 ``[x, y, width, height]`` of the tiles of ``rows``: what a viewer
    draws in the browser as the selection (``SlideViewer.highlight``), without rendering overlay tiles."""
    if not len(rows):
        return np.zeros((0, 4), np.float32)
    size = np.asarray(tile_extent(rows), np.float32)
    return np.stack([rows["x"].to_numpy(np.float32), rows["y"].to_numpy(np.float32), size, size], axis=1)


def highlight_layer(rows: pd.DataFrame, color: tuple[int, int, int] = (255, 230, 0), opacity: float = 0.55) -> TileLayer:
    """The tiles of ``rows`` filled with one colour (default yellow): what is selected, on the slide."""
    n = len(rows)
    rgba = np.zeros((n, 4), np.uint8)
    rgba[:] = (*color, 255)
    size = tile_extent(rows) if n else np.zeros(0)
    legend = {"type": "color", "color": "#{:02x}{:02x}{:02x}".format(*color), "count": int(n)}
    return TileLayer(rows["x"].to_numpy(float) if n else np.zeros(0), rows["y"].to_numpy(float) if n else np.zeros(0),
                     size, rgba, "categorical", HIGHLIGHT_NAME, opacity, legend)


def region_layer(corners: Sequence[Sequence[float]], dimensions: Sequence[int], max_size: int = 1024,
                 color: tuple[int, int, int] = (0, 200, 255), opacity: float = 0.5) -> MaskLayer:
    """The region being drawn on a slide of level-0 ``dimensions`` ``(width, height)``: a dot per corner
    (level-0 ``(x, y)``), the edges between them (closed from three corners on) and the inside, rasterised
    on a mask of at most ``max_size`` pixels a side."""
    pts = np.asarray(corners, float).reshape(-1, 2)
    w, h = (float(v) for v in dimensions)
    if not (w > 0 and h > 0) or not np.isfinite(pts).all():
        raise InvalidParameterError(f"a drawn region needs finite corners on a slide of positive size, got {dimensions}")
    ds = max(w, h) / max(1, int(max_size))
    mw, mh = max(1, int(np.ceil(w / ds))), max(1, int(np.ceil(h / ds)))
    mask = np.zeros((mh, mw), bool)
    p = pts / np.array([w / mw, h / mh])
    r = max(2, round(max(mw, mh) / 200))  # dots and edges a few mask pixels wide
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (xx ** 2 + yy ** 2) <= r * r
    edges = list(zip(p, np.roll(p, -1, axis=0))) if len(p) >= 3 else list(zip(p[:-1], p[1:]))
    if len(p) >= 3:  # the inside: even-odd rule over mask pixel centres
        cy, cx = np.mgrid[0:mh, 0:mw] + 0.5
        inside = np.zeros((mh, mw), bool)
        for (ax, ay), (bx, by) in edges:
            if ay != by:
                crosses = (ay > cy) != (by > cy)
                inside ^= crosses & (cx < ax + (cy - ay) * (bx - ax) / (by - ay))
        mask |= inside
    dots = [*p] + [a + (b - a) * t for a, b in edges for t in np.linspace(0, 1, int(np.hypot(*(b - a)) / r) + 2)]
    for x, y in dots:
        ix, iy = int(round(x)), int(round(y))
        x0, x1, y0, y1 = max(0, ix - r), min(mw, ix + r + 1), max(0, iy - r), min(mh, iy + r + 1)
        if x0 < x1 and y0 < y1:
            mask[y0:y1, x0:x1] |= disk[y0 - iy + r:y1 - iy + r, x0 - ix + r:x1 - ix + r]
    return MaskLayer(mask, (w / mw, h / mh), color, opacity, REGION_NAME)
