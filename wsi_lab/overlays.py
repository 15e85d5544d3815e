"""Overlays aligned with a slide: tissue masks, tile grids, heatmaps, categories and latent colours.

A :class:`Layer` renders any level-0 box ``(x, y, w, h)`` at any output size ``(width, height)`` as an
``(H, W, 4) uint8`` RGBA array, transparent where it has no data, so viewers (deep-zoom server,
napari, notebooks) can ask for exactly the pixels they show. Tile layers are built from a TileTable:
tile ``i`` covers the level-0 box ``(x_i, y_i, s_i, s_i)`` with ``s_i`` from :func:`tile_extent`.

Rasterisation rule (all layers): output pixel ``(row, col)`` shows the data under its centre, the
level-0 point ``(x + (col + 0.5) * w / W, y + (row + 0.5) * h / H)``; a tile smaller than one output
pixel still gets the one pixel that holds its centre. Overlapping tiles: the later row wins.
Colormaps are small built-in tables (no matplotlib). Layers travel between processes as JSON
(:meth:`Layer.to_json` / :meth:`Layer.from_json`).
"""

from __future__ import annotations

import base64
import colorsys
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError

log = logging.getLogger(__name__)

__all__ = [
    "Layer", "MaskLayer", "TileLayer", "GridLayer", "COLORMAPS", "PALETTE",
    "tile_extent", "mask_layer", "grid_layer", "heatmap_layer", "category_layer", "latent_rgb_layer",
    "heatmap", "colormap_lut", "category_colors",
]

Color = str | Sequence[int]

# -- colours ------------------------------------------------------------------------------------
#: evenly spaced anchor colours; a 256-entry LUT is interpolated from them
COLORMAPS: dict[str, tuple[str, ...]] = {
    "viridis": ("#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884",
                "#44bf70", "#7ad151", "#bddf26", "#fde725"),
    "magma": ("#000004", "#140e36", "#3b0f70", "#641a80", "#8c2981", "#b73779", "#de4968",
              "#f7705c", "#fe9f6d", "#fecf92", "#fcfdbf"),
    "coolwarm": ("#3b4cc0", "#6282ea", "#8db0fe", "#b8d0f9", "#dddddd", "#f5c4ac", "#f49a7b",
                 "#de604d", "#b40426"),
    "gray": ("#000000", "#ffffff"),
    "reds": ("#fff5f0", "#fcbba1", "#fb6a4a", "#cb181d", "#67000d"),
}
#: categorical palette (tab10 then the light tab20 shades); more categories continue by golden-angle hues
PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
    "#dbdb8d", "#9edae5",
)


def _rgb(color: Color) -> tuple[int, int, int]:
    """``"#rrggbb"`` or an (r, g, b) tuple of 0–255 ints -> (r, g, b)."""
    if isinstance(color, str):
        s = color.lstrip("#")
        if len(s) == 6:
            try:
                return tuple(int(s[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
            except ValueError:
                pass
    elif isinstance(color, Sequence) and len(color) in (3, 4) and all(
            isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in color):
        return tuple(int(v) for v in color[:3])  # type: ignore[return-value]
    raise InvalidParameterError(f"colour {color!r} is not '#rrggbb' or an (r, g, b) tuple of 0-255 integers")


def _hex(rgb: Sequence[int]) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb[:3])


def colormap_lut(cmap: str, n: int = 256) -> np.ndarray:
    """``(n, 3) uint8`` lookup table of the built-in colormap ``cmap`` (name, ``_r`` reverses it)."""
    name, rev = (cmap[:-2], True) if cmap.endswith("_r") else (cmap, False)
    if name not in COLORMAPS:
        raise InvalidParameterError(f"unknown colormap {cmap!r}; choose one of {', '.join(sorted(COLORMAPS))} (or '<name>_r')")
    anchors = np.array([_rgb(c) for c in COLORMAPS[name]], float)
    t = np.linspace(0, 1, len(anchors))
    u = np.linspace(0, 1, n)
    lut = np.stack([np.interp(u, t, anchors[:, k]) for k in range(3)], axis=1)
    lut = np.clip(np.round(lut), 0, 255).astype(np.uint8)
    return lut[::-1].copy() if rev else lut


def category_colors(n: int) -> list[str]:
    """``n`` distinct hex colours: :data:`PALETTE` first, then golden-angle hues."""
    out = list(PALETTE[:n])
    for i in range(len(out), n):
        h = (i * 0.618033988749895) % 1.0
        out.append(_hex([round(255 * v) for v in colorsys.hsv_to_rgb(h, 0.65, 0.9)]))
    return out


# -- array <-> JSON -----------------------------------------------------------------------------
def _enc(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _dec(d: Mapping) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def _pyval(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# -- geometry -----------------------------------------------------------------------------------
def tile_extent(table, slide_or_downsamples=None) -> np.ndarray:
    """Level-0 side length (pixels) of every tile of ``table``: the ``size0`` column when present, else
    ``read_size * level_downsample(level)``. ``slide_or_downsamples`` is a Slide (or anything with
    ``level_downsamples``) or a sequence of per-level downsamples; it may be omitted when every tile
    is at level 0."""
    if "size0" in table.columns:
        return table["size0"].to_numpy(dtype=float)
    for col in ("read_size",):
        if col not in table.columns:
            raise InvalidParameterError(f"tile table has no {col!r} (or 'size0') column; columns are {list(table.columns)}")
    read = table["read_size"].to_numpy(dtype=float)
    levels = table["level"].to_numpy(dtype=int) if "level" in table.columns else np.zeros(len(table), int)
    if slide_or_downsamples is None:
        if len(levels) and levels.max() > 0:
            raise InvalidParameterError(
                "tiles are read at levels > 0, so their level-0 size needs the slide's level downsamples: "
                "pass slide=<Slide> (or the list of downsamples), or add a 'size0' column")
        return read
    ds = getattr(slide_or_downsamples, "level_downsamples", slide_or_downsamples)
    ds = np.asarray(list(ds), float)
    if len(levels) and (levels.min() < 0 or levels.max() >= len(ds)):
        raise InvalidParameterError(f"tile levels {sorted(set(levels.tolist()))} do not all exist; the slide has {len(ds)} level(s)")
    return read * ds[levels] if len(levels) else read


def _centre_range(start: np.ndarray, stop: np.ndarray, origin: float, scale: float, n: int):
    """Output-pixel index ranges [i0, i1) whose centres fall in level-0 [start, stop); ≥ 1 pixel for
    spans that are inside the output but thinner than a pixel; clipped to [0, n)."""
    a = (start - origin) * scale - 0.5
    b = (stop - origin) * scale - 0.5
    i0 = np.ceil(a)
    i1 = np.ceil(b)
    thin = i1 <= i0
    mid = np.floor(((start + stop) / 2 - origin) * scale)
    i0 = np.where(thin, mid, i0)
    i1 = np.where(thin, mid + 1, i1)
    return np.clip(i0, 0, n).astype(np.int64), np.clip(i1, 0, n).astype(np.int64)


def _paint(out_size: tuple[int, int], x0, x1, y0, y1) -> np.ndarray:
    """Rasterise rectangles of output pixels [x0, x1) x [y0, y1); returns an (H, W) int64 array with
    the index of the last rectangle covering each pixel, -1 where none does. Large rectangles are
    sliced (there are few of them per output), small ones are painted all at once with numpy."""
    ow, oh = out_size
    out = np.full((oh, ow), -1, np.int64)
    w, h = x1 - x0, y1 - y0
    rank = np.flatnonzero((w > 0) & (h > 0))
    area = w[rank] * h[rank]
    for r in rank[area >= 2048]:
        view = out[y0[r]:y1[r], x0[r]:x1[r]]
        np.maximum(view, r, out=view)
    small = rank[area < 2048]
    if not len(small):
        return out
    flat_out = np.full(oh * ow, -1, np.int64)
    n = w[small] * h[small]
    ends = np.cumsum(n)
    start = 0
    while start < len(small):  # batches of ~4M pixels bound the memory
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + 4_000_000, side="right")), start + 1)
        r, cnt = small[start:stop], n[start:stop]
        rep = np.repeat(np.arange(len(r)), cnt)
        local = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        ww = w[r][rep]
        flat = (y0[r][rep] + local // ww) * ow + x0[r][rep] + local % ww
        flat_out[flat] = r[rep]  # ascending ranks: the later rectangle is written last
        start = stop
    np.maximum(out, flat_out.reshape(oh, ow), out=out)
    return out


def _check_box(box, out_size) -> tuple[float, float, float, float, int, int]:
    try:
        bx, by, bw, bh = (float(v) for v in box)
        ow, oh = (int(v) for v in out_size)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"box must be (x, y, w, h) and out_size (width, height); got {box!r}, {out_size!r}") from exc
    if not (bw > 0 and bh > 0 and ow > 0 and oh > 0) or ow * oh > 2**26:
        raise InvalidParameterError(f"box {box!r} and out_size {out_size!r} must be positive (out_size ≤ 64 MP)")
    return bx, by, bw, bh, ow, oh


# -- layers -------------------------------------------------------------------------------------
class Layer:
    """Base overlay: ``name``, ``kind`` ("mask" | "grid" | "heatmap" | "categorical" | "image"),
    ``opacity`` (0–1) and ``render_region``."""

    kind: str = "image"

    def __init__(self, name: str, opacity: float = 1.0) -> None:
        if not (0.0 <= float(opacity) <= 1.0):
            raise InvalidParameterError(f"opacity must be between 0 and 1, got {opacity!r}")
        self.name = str(name)
        self.opacity = float(opacity)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} kind={self.kind} opacity={self.opacity}>"

    def render_region(self, box: tuple[float, float, float, float], out_size: tuple[int, int],
                      apply_opacity: bool = True) -> np.ndarray:
        """Render the level-0 box ``(x, y, w, h)`` at ``out_size`` = (width, height); returns
        (H, W, 4) uint8 RGBA, alpha 0 where there is no data and ``255 * opacity`` elsewhere
        (``apply_opacity=False`` leaves it at 255 for viewers that apply opacity themselves)."""
        bx, by, bw, bh, ow, oh = _check_box(box, out_size)
        rgba = self._render(bx, by, bw, bh, ow, oh)
        if apply_opacity and self.opacity < 1.0:
            rgba[..., 3] = (rgba[..., 3].astype(np.float32) * self.opacity + 0.5).astype(np.uint8)
        return rgba

    def _render(self, bx, by, bw, bh, ow, oh) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def bounds(self) -> tuple[float, float, float, float] | None:
        """Level-0 ``(x, y, w, h)`` box that holds all the data, or ``None`` when empty."""
        return None

    def legend(self) -> dict:
        """JSON-able legend ({"type": "continuous" | "categorical" | "color" | "rgb", ...})."""
        return {"type": "none"}

    def _state(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_json(self) -> str:
        """JSON text that :meth:`Layer.from_json` turns back into an equal layer (in any process)."""
        return json.dumps({"class": type(self).__name__, "name": self.name, "opacity": self.opacity,
                           "kind": self.kind, **self._state()})

    @staticmethod
    def from_json(data: str | bytes | Mapping) -> "Layer":
        """Rebuild a layer from :meth:`to_json` output (text or the parsed dict)."""
        d = json.loads(data) if isinstance(data, (str, bytes)) else dict(data)
        cls = {"MaskLayer": MaskLayer, "TileLayer": TileLayer, "GridLayer": GridLayer}.get(d.get("class"))
        if cls is None:
            raise InvalidParameterError(f"not a serialised wsi_lab layer (class={d.get('class')!r})")
        return cls._from_state(d)


class MaskLayer(Layer):
    """A boolean (H, W) mask at ``downsample`` level-0 pixels per mask pixel, drawn in one colour."""

    kind = "mask"

    def __init__(self, mask: np.ndarray, downsample: float | tuple[float, float], color: Color = (0, 255, 0),
                 opacity: float = 0.4, name: str = "tissue") -> None:
        super().__init__(name, opacity)
        m = np.asarray(mask)
        if m.ndim != 2 or m.size == 0:
            raise InvalidParameterError(f"mask must be a non-empty 2-D (H, W) array, got shape {m.shape}")
        self.mask = m.astype(bool)
        dx, dy = (downsample, downsample) if np.isscalar(downsample) else downsample
        if not (float(dx) > 0 and float(dy) > 0):
            raise InvalidParameterError(f"mask downsample must be positive, got {downsample!r}")
        self.downsample = (float(dx), float(dy))
        self.color = _rgb(color)

    def _render(self, bx, by, bw, bh, ow, oh):
        H, W = self.mask.shape
        dx, dy = self.downsample
        mx = np.floor((bx + (np.arange(ow) + 0.5) * bw / ow) / dx).astype(np.int64)
        my = np.floor((by + (np.arange(oh) + 0.5) * bh / oh) / dy).astype(np.int64)
        vx, vy = (mx >= 0) & (mx < W), (my >= 0) & (my < H)
        on = np.zeros((oh, ow), bool)
        on[np.ix_(vy, vx)] = self.mask[np.ix_(my[vy], mx[vx])]
        c32 = np.array([*self.color, 255], np.uint8).view(np.uint32)[0]
        return np.where(on, c32, np.uint32(0)).view(np.uint8).reshape(oh, ow, 4)

    def bounds(self):
        H, W = self.mask.shape
        return (0.0, 0.0, W * self.downsample[0], H * self.downsample[1])

    def legend(self):
        return {"type": "color", "label": self.name, "color": _hex(self.color)}

    def _state(self):
        return {"mask": _enc(np.packbits(self.mask, axis=None)), "shape": list(self.mask.shape),
                "downsample": list(self.downsample), "color": list(self.color)}

    @classmethod
    def _from_state(cls, d):
        n = d["shape"][0] * d["shape"][1]
        mask = np.unpackbits(_dec(d["mask"]), count=n).reshape(d["shape"]).astype(bool)
        return cls(mask, tuple(d["downsample"]), tuple(d["color"]), d["opacity"], d["name"])


class TileLayer(Layer):
    """Square tiles ``(x, y, size)`` in level-0 pixels, each with an RGBA colour (alpha 0 = no data).

    Tiles are kept sorted by ``x`` so a region only looks at the tiles whose x-range can reach it."""

    def __init__(self, x, y, size, colors: np.ndarray, kind: str, name: str, opacity: float = 1.0,
                 legend: dict | None = None) -> None:
        super().__init__(name, opacity)
        x, y, size = (np.asarray(a, float).ravel() for a in (x, y, size))
        colors = np.asarray(colors, np.uint8)
        if not (len(x) == len(y) == len(size) == len(colors)) or colors.ndim != 2 or colors.shape[1] != 4:
            raise InvalidParameterError("x, y, size and (N, 4) colours must have one row per tile")
        keep = colors[:, 3] > 0
        order = np.argsort(x[keep], kind="stable")  # stable: later rows still win among overlaps
        self.x, self.y, self.size = x[keep][order], y[keep][order], size[keep][order]
        self.colors = colors[keep][order]
        self._row = np.flatnonzero(keep)[order]  # original row of each sorted tile
        # colours as uint32 with a transparent sentinel at the end, for one gather per render
        self._c32 = np.concatenate([self.colors, np.zeros((1, 4), np.uint8)]).view(np.uint32).ravel()
        self.kind = kind
        self._legend = legend or {"type": "none"}
        self._max_size = float(self.size.max()) if len(self.size) else 0.0
        self._n_total = len(x)

    def __len__(self) -> int:
        return self._n_total

    def _visible(self, bx, by, bw, bh) -> np.ndarray:
        lo = np.searchsorted(self.x, bx - self._max_size, side="left")
        hi = np.searchsorted(self.x, bx + bw, side="left")
        sel = np.arange(lo, hi)
        x, y, s = self.x[sel], self.y[sel], self.size[sel]
        hit = (x + s > bx) & (y + s > by) & (y < by + bh)
        sel = sel[hit]
        return sel[np.argsort(self._row[sel], kind="stable")]  # table order: later rows paint last

    def _render(self, bx, by, bw, bh, ow, oh):
        sel = self._visible(bx, by, bw, bh)
        out = np.zeros((oh, ow, 4), np.uint8)
        if len(sel) == 0:
            return out
        sx, sy = ow / bw, oh / bh
        x0, x1 = _centre_range(self.x[sel], self.x[sel] + self.size[sel], bx, sx, ow)
        y0, y1 = _centre_range(self.y[sel], self.y[sel] + self.size[sel], by, sy, oh)
        tiles = self._paint_ids(sel, x0, x1, y0, y1, ow, oh)
        return self._c32[tiles].view(np.uint8).reshape(oh, ow, 4)

    def _paint_ids(self, sel, x0, x1, y0, y1, ow, oh) -> np.ndarray:
        """(H, W) sorted-tile index per pixel; ``len(self.x)`` (the transparent colour) where none."""
        rank = _paint((ow, oh), x0, x1, y0, y1)
        return np.where(rank >= 0, sel[rank], len(self.x))

    def bounds(self):
        if not len(self.x):
            return None
        x0, y0 = self.x.min(), self.y.min()
        return (float(x0), float(y0), float((self.x + self.size).max() - x0), float((self.y + self.size).max() - y0))

    def legend(self):
        return dict(self._legend)

    def _state(self):
        return {"x": _enc(self.x), "y": _enc(self.y), "size": _enc(self.size), "colors": _enc(self.colors),
                "legend": self._legend}

    @classmethod
    def _from_state(cls, d):
        return cls(_dec(d["x"]), _dec(d["y"]), _dec(d["size"]), _dec(d["colors"]), d["kind"], d["name"],
                   d["opacity"], d["legend"])


class GridLayer(TileLayer):
    """Tile outlines, ``line_width`` output pixels wide (drawn inside each tile's box)."""

    def __init__(self, x, y, size, color: Color = (255, 255, 0), line_width: int = 1, name: str = "tiles",
                 opacity: float = 1.0) -> None:
        if int(line_width) < 1:
            raise InvalidParameterError(f"line_width must be ≥ 1 output pixel, got {line_width!r}")
        self.color = _rgb(color)
        self.line_width = int(line_width)
        n = len(np.asarray(x).ravel())
        colors = np.tile(np.array([*self.color, 255], np.uint8), (n, 1))
        super().__init__(x, y, size, colors, "grid", name, opacity,
                         {"type": "color", "label": name, "color": _hex(self.color)})

    def _paint_ids(self, sel, x0, x1, y0, y1, ow, oh):
        lw = self.line_width
        # four borders per tile, each clipped to the tile's own pixel range
        L = (x0, np.minimum(x0 + lw, x1), y0, y1)
        R = (np.maximum(x1 - lw, x0), x1, y0, y1)
        T = (x0, x1, y0, np.minimum(y0 + lw, y1))
        B = (x0, x1, np.maximum(y1 - lw, y0), y1)
        parts = [np.concatenate(p) for p in zip(L, R, T, B)]
        rank = _paint((ow, oh), *parts)
        return np.where(rank >= 0, np.tile(sel, 4)[rank], len(self.x))

    def _state(self):
        return {"x": _enc(self.x), "y": _enc(self.y), "size": _enc(self.size), "color": list(self.color),
                "line_width": self.line_width}

    @classmethod
    def _from_state(cls, d):
        return cls(_dec(d["x"]), _dec(d["y"]), _dec(d["size"]), tuple(d["color"]), d["line_width"], d["name"],
                   d["opacity"])


# -- constructors -------------------------------------------------------------------------------
def _column(table, column: str):
    if column not in table.columns:
        raise InvalidParameterError(f"tile table has no column {column!r}; columns are {list(table.columns)}")
    return table[column]


def _xy(table) -> tuple[np.ndarray, np.ndarray]:
    for c in ("x", "y"):
        _column(table, c)
    return table["x"].to_numpy(dtype=float), table["y"].to_numpy(dtype=float)


def _numeric(table, column: str) -> np.ndarray:
    import pandas as pd

    col = _column(table, column)
    if not (pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype)):
        raise InvalidParameterError(
            f"column {column!r} has dtype {col.dtype}, not numbers; use category_layer() for labels")
    return col.to_numpy(dtype=float, na_value=np.nan)


def mask_layer(mask, color: Color = (0, 255, 0), opacity: float = 0.4, downsample: float | None = None,
               name: str = "tissue") -> MaskLayer:
    """Overlay of a TissueMask (``.mask`` boolean (H, W), ``.downsample`` level-0 px per mask px), or
    of a plain boolean array with an explicit ``downsample``."""
    arr = getattr(mask, "mask", mask)
    ds = downsample if downsample is not None else getattr(mask, "downsample", None)
    if ds is None:
        raise InvalidParameterError("a plain mask array needs downsample=<level-0 pixels per mask pixel>")
    return MaskLayer(np.asarray(arr), ds, color, opacity, name)


def grid_layer(table, color: Color = (255, 255, 0), line_width: int = 1, slide=None, opacity: float = 1.0,
               name: str = "tiles") -> GridLayer:
    """Outline of every tile of ``table`` (``slide`` gives the level downsamples for tiles at levels > 0)."""
    x, y = _xy(table)
    return GridLayer(x, y, tile_extent(table, slide), color, line_width, name, opacity)


def heatmap_layer(table, column: str, cmap: str = "viridis", vmin: float | None = None,
                  vmax: float | None = None, opacity: float = 0.5, slide=None, name: str | None = None) -> TileLayer:
    """Tiles coloured by numeric ``column`` through ``cmap`` over [vmin, vmax] (default: the column's
    finite min and max); NaN tiles are transparent."""
    vals = _numeric(table, column)
    lut = colormap_lut(cmap)
    finite = np.isfinite(vals)
    lo = float(np.min(vals[finite])) if vmin is None and finite.any() else vmin
    hi = float(np.max(vals[finite])) if vmax is None and finite.any() else vmax
    if lo is not None and hi is not None and not lo <= hi:
        raise InvalidParameterError(f"heatmap of {column!r}: vmin {lo!r} must be ≤ vmax {hi!r}")
    span = (hi - lo) if (lo is not None and hi is not None and hi > lo) else None
    t = np.clip((vals - lo) / span, 0, 1) if span else np.full(len(vals), 0.5)
    colors = np.zeros((len(vals), 4), np.uint8)
    colors[finite, :3] = lut[np.round(t[finite] * 255).astype(int)]
    colors[finite, 3] = 255
    x, y = _xy(table)
    legend = {"type": "continuous", "column": column, "cmap": cmap, "vmin": lo, "vmax": hi,
              "colors": [_hex(c) for c in lut[::32].tolist() + [lut[-1].tolist()]]}
    return TileLayer(x, y, tile_extent(table, slide), colors, "heatmap", name or column, opacity, legend)


def category_layer(table, column: str, colors: Mapping[Any, Color] | Sequence[Color] | None = None,
                   opacity: float = 0.5, slide=None, name: str | None = None) -> TileLayer:
    """Tiles coloured by the category in ``column``. Categories are ordered by the pandas categorical
    order when the column has one, else sorted, so a value keeps its colour across regions and tables
    with the same categories; ``colors`` maps value -> colour (or lists colours in that order).
    Missing values are transparent."""
    import pandas as pd

    col = _column(table, column)
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = list(col.cat.categories)
    else:
        uniq = pd.unique(col.dropna())
        try:
            cats = sorted(uniq.tolist())
        except TypeError:
            cats = sorted(uniq.tolist(), key=str)
    if isinstance(colors, Mapping):
        auto = iter(category_colors(len(cats) + len(colors)))
        chosen = {c: _rgb(colors[c]) if c in colors else None for c in cats}
        used = {_hex(v) for v in chosen.values() if v}
        for c in cats:
            if chosen[c] is None:
                chosen[c] = _rgb(next(h for h in auto if h not in used))
        cmap = [chosen[c] for c in cats]
    elif colors is not None:
        if len(colors) < len(cats):
            raise InvalidParameterError(f"column {column!r} has {len(cats)} categories but {len(colors)} colours were given")
        cmap = [_rgb(c) for c in colors[:len(cats)]]
    else:
        cmap = [_rgb(c) for c in category_colors(len(cats))]
    codes = pd.Categorical(col, categories=cats).codes.astype(np.int64)
    rgba = np.zeros((len(col), 4), np.uint8)
    lut = np.array([[*c, 255] for c in cmap], np.uint8).reshape(-1, 4)
    rgba[codes >= 0] = lut[codes[codes >= 0]]
    x, y = _xy(table)
    legend = {"type": "categorical", "column": column,
              "categories": [{"value": _pyval(c), "color": _hex(rgb)} for c, rgb in zip(cats, cmap)]}
    return TileLayer(x, y, tile_extent(table, slide), rgba, "categorical", name or column, opacity, legend)


def latent_rgb_layer(table, columns: Sequence[str] = ("z_00", "z_01", "z_02"), opacity: float = 0.8,
                     slide=None, name: str = "latent") -> TileLayer:
    """Tiles coloured by three numeric columns mapped to R, G, B (each min-max scaled over the table,
    2–98th percentile to resist outliers); tiles with any NaN are transparent."""
    if len(columns) != 3:
        raise InvalidParameterError(f"latent_rgb_layer needs exactly 3 columns for R, G, B, got {list(columns)}")
    rgba = np.zeros((len(table), 4), np.uint8)
    ok = np.ones(len(table), bool)
    channels = []
    for k, c in enumerate(columns):
        v = _numeric(table, c)
        f = np.isfinite(v)
        ok &= f
        lo, hi = (np.percentile(v[f], [2, 98]).tolist() if f.any() else (0.0, 1.0))
        span = hi - lo if hi > lo else 1.0
        rgba[f, k] = np.round(np.clip((v[f] - lo) / span, 0, 1) * 255).astype(np.uint8)
        channels.append({"column": c, "vmin": lo, "vmax": hi})
    rgba[ok, 3] = 255
    rgba[~ok] = 0
    x, y = _xy(table)
    return TileLayer(x, y, tile_extent(table, slide), rgba, "image", name, opacity,
                     {"type": "rgb", "columns": list(columns), "channels": channels})


def heatmap(table, column: str, dimensions=None, max_size: int = 1024, downsample: float | None = None,
            cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
            opacity: float = 1.0, slide=None) -> np.ndarray:
    """Whole-slide RGBA overlay ``(H, W, 4) uint8`` of numeric ``column``. ``dimensions`` is the level-0
    (width, height) or a Slide. With ``max_size`` the output has exactly the shape of
    ``slide.get_thumbnail(max_size)`` (aspect kept, never enlarged) so the two stack; with
    ``downsample`` (level-0 px per output px) pixel ``(r, c)`` covers level-0 ``[c * ds, (c + 1) * ds)``
    horizontally (and likewise vertically) and the shape is ``ceil(H / ds), ceil(W / ds)``."""
    src = slide if slide is not None else (dimensions if hasattr(dimensions, "level_downsamples") else None)
    dims = getattr(dimensions, "dimensions", dimensions) if dimensions is not None else getattr(slide, "dimensions", None)
    if dims is None:
        raise InvalidParameterError("heatmap() needs dimensions=(width, height) in level-0 pixels or a Slide")
    W, H = (float(v) for v in dims)
    layer = heatmap_layer(table, column, cmap, vmin, vmax, opacity, slide=src)
    if downsample is None:
        if int(max_size) <= 0:
            raise InvalidParameterError(f"max_size must be positive, got {max_size!r}")
        scale = max(W / max_size, H / max_size, 1.0)
        return layer.render_region((0, 0, W, H), (max(1, round(W / scale)), max(1, round(H / scale))))
    if not downsample > 0:
        raise InvalidParameterError(f"downsample must be positive, got {downsample!r}")
    ow, oh = max(1, math.ceil(W / downsample - 1e-9)), max(1, math.ceil(H / downsample - 1e-9))
    return layer.render_region((0, 0, ow * downsample, oh * downsample), (ow, oh))
