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

from wsi_lab.overlays._build import (
    category_layer,
    grid_layer,
    heatmap,
    heatmap_layer,
    latent_rgb_layer,
    mask_layer,
)
from wsi_lab.overlays._colors import COLORMAPS, PALETTE, category_colors, colormap_lut
from wsi_lab.overlays._compose import composite, render_overview, resolve_layers, slide_rows
from wsi_lab.overlays._layers import GridLayer, Layer, MaskLayer, TileLayer
from wsi_lab.overlays._raster import tile_extent

__all__ = [
    "Layer", "MaskLayer", "TileLayer", "GridLayer", "COLORMAPS", "PALETTE",
    "tile_extent", "mask_layer", "grid_layer", "heatmap_layer", "category_layer", "latent_rgb_layer",
    "heatmap", "colormap_lut", "category_colors", "resolve_layers", "composite", "render_overview", "slide_rows",
]
