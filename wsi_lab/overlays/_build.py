"""Constructors that turn a TileTable (or a TissueMask) into layers, and the whole-slide heatmap."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError
from wsi_lab.overlays._colors import Color, _hex, _rgb, category_colors, colormap_lut
from wsi_lab.overlays._layers import GridLayer, MaskLayer, TileLayer, _pyval
from wsi_lab.overlays._raster import tile_extent


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


def mask_layer(mask, color: Color = (0, 255, 0), opacity: float = 0.25, downsample: float | None = None,
               name: str = "tissue", outline: bool = False) -> MaskLayer:
    """Overlay of a TissueMask (``.mask`` boolean (H, W), ``.downsample`` level-0 px per mask px), or
    of a plain boolean array with an explicit ``downsample``. Light by default (opacity 0.25) so the
    morphology shows through; ``outline=True`` draws only the mask's boundary."""
    arr = getattr(mask, "mask", mask)
    ds = downsample if downsample is not None else getattr(mask, "downsample", None)
    if ds is None:
        raise InvalidParameterError("a plain mask array needs downsample=<level-0 pixels per mask pixel>")
    return MaskLayer(np.asarray(arr), ds, color, opacity, name, outline)


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
        chosen = {c: _rgb(colors[c]) for c in cats if c in colors}
        used = {_hex(v) for v in chosen.values()}
        cmap = [chosen[c] if c in chosen else _rgb(next(h for h in auto if h not in used)) for c in cats]
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
