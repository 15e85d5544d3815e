"""``ScatterPlot``: a 2-D scatter of many points (200k and more) as an anywidget of our own, drawn by a
Canvas-2D rasteriser in the browser (``widgets/src/scatter.ts``: one pass over the points into an
``ImageData``; no WebGL, so no GPU needed and the same speed in a headless browser).

The points travel as binary buffers: float32 ``x``/``y`` and one uint8 colour code per point with a
palette of at most 256 colours (categories, or a continuous column quantised to 256 levels of a
colormap) and a legend. A lasso drawn in the browser (drag; shift-drag or the pan tool moves the view,
the wheel zooms, a double click resets it) comes back as one uint32 buffer of point indices
(:attr:`selection`); setting :attr:`selection` from the kernel draws those points highlighted. Linked to a
:class:`~wsi_lab.ui.viewer.SlideViewer` (:meth:`ScatterPlot.link_boxes`), a lasso also draws its tiles on
the slide in the page at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import pandas as pd
import traitlets
from ipywidgets.widgets.trait_types import bytes_serialization

from wsi_lab.errors import InvalidParameterError

__all__ = ["JupyterScatter", "ScatterPlot", "colour_codes"]

STATIC = Path(__file__).resolve().parents[1] / "static"
MISSING = "#bbbbbb"  # the colour of a missing value


def colour_codes(values: pd.Series | np.ndarray, cmap: str = "viridis") -> tuple[np.ndarray, list[str], dict]:
    """One uint8 code per value, the palette the codes index and a legend: categories (non-numbers, or
    pandas categoricals; at most 255) get the categorical palette, numbers 256 levels of ``cmap``
    between their min and max. Missing values get code 255, drawn grey."""
    from wsi_lab.overlays import category_colors, colormap_lut

    s = pd.Series(values)
    if pd.api.types.is_numeric_dtype(s) and not isinstance(s.dtype, pd.CategoricalDtype) \
            and not pd.api.types.is_bool_dtype(s):
        v = s.to_numpy(np.float64)
        ok = np.isfinite(v)
        lo, hi = (float(v[ok].min()), float(v[ok].max())) if ok.any() else (0.0, 1.0)
        scaled = (np.where(ok, v, lo) - lo) / ((hi - lo) or 1.0)
        codes = np.clip(np.round(scaled * 254), 0, 254).astype(np.uint8)
        codes[~ok] = 255
        lut = colormap_lut(cmap, 255)
        palette = ["#{:02x}{:02x}{:02x}".format(*row) for row in lut] + [MISSING]
        return codes, palette, {"kind": "continuous", "min": lo, "max": hi, "colors": [palette[0], palette[127], palette[254]]}
    cat = s if isinstance(s.dtype, pd.CategoricalDtype) else s.astype("string").astype("category")
    labels = [str(c) for c in cat.cat.categories]
    if len(labels) > 255:
        raise InvalidParameterError(f"{len(labels)} categories: a scatter colours at most 255; colour by another column")
    raw = cat.cat.codes.to_numpy()
    codes = np.where(raw < 0, 255, raw).astype(np.uint8)
    palette = category_colors(len(labels))
    entries = [[label, palette[i]] for i, label in enumerate(labels)]
    if (raw < 0).any():
        entries.append(["(missing)", MISSING])
    return codes, palette + [MISSING] * (256 - len(palette)), {"kind": "categorical", "entries": entries}


class ScatterPlot(anywidget.AnyWidget):
    """A scatter of ``x``/``y`` (N,) drawn in the browser on a Canvas 2D; :meth:`color` colours it by a
    column, :attr:`selected` holds the points lassoed in the page (or set by :meth:`select`)."""

    _esm = STATIC / "scatter.js"
    x = traitlets.Bytes(b"").tag(sync=True)  # float32 (N,)
    y = traitlets.Bytes(b"").tag(sync=True)  # float32 (N,)
    codes = traitlets.Bytes(b"").tag(sync=True)  # uint8 (N,): index into palette
    palette = traitlets.List(traitlets.Unicode(), []).tag(sync=True)
    legend = traitlets.Dict({}).tag(sync=True)  # {kind: categorical, entries: [[label, colour]]} | continuous
    title = traitlets.Unicode("").tag(sync=True)  # the legend's heading (the column)
    # uint32 point indices, both ways; the page's lasso is not echoed back (the page drew it already)
    selection = traitlets.Bytes(b"").tag(sync=True, echo_update=False, **bytes_serialization)
    # float32 (N, 4): each point's tile on the linked viewer's slide (NaN: on another), see link_boxes()
    boxes = traitlets.Bytes(b"").tag(sync=True)
    link = traitlets.Unicode("").tag(sync=True)  # the token of the linked SlideViewer (its ``link``)
    height = traitlets.Int(420).tag(sync=True)
    point_size = traitlets.Int(2).tag(sync=True)  # CSS px per point

    def __init__(self, x: Any, y: Any, height: int = 420, point_size: int = 2, **kwargs: Any) -> None:
        xs, ys = np.asarray(x, np.float32).ravel(), np.asarray(y, np.float32).ravel()
        if len(xs) != len(ys):
            raise InvalidParameterError(f"x and y differ in length: {len(xs)} and {len(ys)}")
        super().__init__(x=xs.tobytes(), y=ys.tobytes(), codes=np.zeros(len(xs), np.uint8).tobytes(),
                         palette=["#1f77b4"], height=int(height), point_size=int(point_size), **kwargs)
        self.n = len(xs)
        self.select_ms = float("nan")  # the kernel's handling of the last selection change (callbacks too)
        self._callbacks: list[Callable[[np.ndarray], None]] = []
        self.observe(self._on_selection, "selection")

    @property
    def widget(self) -> ScatterPlot:
        """The widget to show (this one; jupyter-scatter's adapter answers its own)."""
        return self

    @property
    def selected(self) -> np.ndarray:
        """The selected points (int64 indices)."""
        return np.frombuffer(self.selection, np.uint32).astype(np.int64)

    def select(self, points: Any) -> None:
        """Select ``points`` (indices; None or empty clears): drawn highlighted in the page."""
        pts = np.zeros(0, np.int64) if points is None else np.asarray(points, np.int64).ravel()
        if len(pts) and (pts.min() < 0 or pts.max() >= self.n):
            raise InvalidParameterError(f"point indices must be in 0..{self.n - 1}")
        self.selection = np.unique(pts).astype(np.uint32).tobytes()

    def link_boxes(self, link: str, boxes: Any) -> None:
        """Link the scatter to the viewer whose ``link`` is ``link`` in the page: ``boxes`` (N, 4) are the
        points' tiles on its slide (level-0 ``[x, y, width, height]``, NaN rows for tiles of other slides). A
        lasso then draws the selected tiles on that slide in the page itself, with no kernel round trip."""
        b = np.ascontiguousarray(boxes, np.float32)
        if b.shape != (self.n, 4):
            raise InvalidParameterError(f"boxes must be ({self.n}, 4), one per point; got {b.shape}")
        with self.hold_sync():
            self.boxes, self.link = b.tobytes(), str(link)

    def color(self, values: Any, title: str = "", cmap: str = "viridis") -> None:
        """Colour the points by ``values`` (N,): see :func:`colour_codes`."""
        codes, palette, legend = colour_codes(values, cmap)
        if len(codes) != self.n:
            raise InvalidParameterError(f"{len(codes)} colour values for {self.n} points")
        with self.hold_sync():
            self.codes, self.palette, self.legend, self.title = codes.tobytes(), palette, legend, str(title)

    def on_select(self, callback: Callable[[np.ndarray], None]) -> None:
        """Call ``callback(points)`` whenever the selection changes (the page's lasso or :meth:`select`)."""
        self._callbacks.append(callback)

    def _on_selection(self, _change: dict) -> None:
        t0 = time.perf_counter()
        if len(self.selection) % 4:  # not whole uint32s: not from our page
            self.selection = self.selection[:len(self.selection) - len(self.selection) % 4]
            return
        sel = self.selected
        for cb in self._callbacks:
            cb(sel)
        self.select_ms = (time.perf_counter() - t0) * 1000


class JupyterScatter:
    """jupyter-scatter's WebGL scatter of ``table``'s ``embed_x``/``embed_y`` (colourable by ``options``) behind the
    same small interface as :class:`ScatterPlot` (``LatentExplorer(..., scatter="jupyter-scatter")``)."""

    def __init__(self, table: pd.DataFrame, options: list[str], color_by: str | None, height: int) -> None:
        import jscatter

        data = table[["embed_x", "embed_y", *[c for c in options if c in table.columns]]].copy()
        for c in data.columns[2:]:  # strings as categories: jupyter-scatter colours them by code
            if not pd.api.types.is_numeric_dtype(data[c]) and not isinstance(data[c].dtype, pd.CategoricalDtype):
                data[c] = data[c].astype(str).astype("category")
        self.scatter = jscatter.Scatter(x="embed_x", y="embed_y", data=data, height=height, axes=False, size=2,
                                        opacity=0.6, legend=bool(color_by), **({"color_by": color_by} if color_by else {}))
        self.scatter.mouse(mode="lasso")  # a drag brushes points (the slide beside it pans and zooms)
        self.widget = self.scatter.widget

    @property
    def selected(self) -> np.ndarray:
        sel = self.widget.selection
        return np.zeros(0, np.int64) if sel is None else np.asarray(sel, np.int64)

    def select(self, points: Any) -> None:
        self.scatter.selection(points)

    def color(self, column: str) -> None:
        self.scatter.color(by=column)

    def on_select(self, callback: Any) -> None:
        self.widget.observe(lambda ch: callback(np.zeros(0, np.int64) if ch["new"] is None
                                                else np.asarray(ch["new"], np.int64)), "selection")
