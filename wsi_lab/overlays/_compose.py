"""Layers by name (for CLIs, viewers and notebooks) and compositing layers over a slide overview."""

from __future__ import annotations

import logging

import numpy as np

from wsi_lab.errors import InvalidParameterError
from wsi_lab.overlays._build import category_layer, grid_layer, heatmap_layer, latent_rgb_layer, mask_layer
from wsi_lab.overlays._layers import Layer, MaskLayer
from wsi_lab.overlays.predictions import named_layer, with_legends

log = logging.getLogger(__name__)

__all__ = ["resolve_layers", "composite", "render_overview", "slide_rows"]


def resolve_layers(overlays, table=None, mask=None, slide=None) -> list[Layer]:
    """Layers from ``overlays``: :class:`~wsi_lab.overlays.Layer` objects, or names — ``"tissue"`` /
    ``"mask"`` (needs ``mask``), ``"grid"`` / ``"tiles"`` (needs ``table``), ``"latent"`` (z_00..z_02),
    a prediction layer (``heatmap[:<class>]``, ``pred``, ``pca``, ``umap``, ``clusters[:<k>]``,
    ``attention``: :func:`~wsi_lab.overlays.predictions.named_layer`),
    or a ``table`` column (numbers -> heatmap, else categories). A given ``mask`` is always shown; a
    given ``table`` with no overlays named shows its grid."""
    items = list(overlays or ())
    if mask is not None and not any(isinstance(o, MaskLayer) or o in ("tissue", "mask") for o in items):
        items.insert(0, "tissue")
    if table is not None and all(isinstance(o, MaskLayer) or o in ("tissue", "mask") for o in items):
        items.append("grid")
    out: list[Layer] = []
    for item in items:
        if isinstance(item, Layer):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise InvalidParameterError(f"overlay {item!r} is neither a wsi_lab.overlays.Layer nor a name")
        if item in ("tissue", "mask"):
            if mask is None:
                raise InvalidParameterError(f"overlay {item!r} needs mask=<TissueMask>")
            out.append(mask_layer(mask))
            continue
        if table is None:
            raise InvalidParameterError(f"overlay {item!r} needs table=<TileTable>")
        predicted = named_layer(table, item)
        if predicted is not None:
            out.append(predicted)
        elif item in ("grid", "tiles"):
            out.append(grid_layer(table, slide=slide))
        elif item == "latent" and item not in table.columns:
            out.append(latent_rgb_layer(table, slide=slide))
        elif item in table.columns and _is_numeric(table[item]):
            out.append(heatmap_layer(table, item, cmap="coolwarm" if item.startswith("prob_") else "viridis", slide=slide))
        else:
            out.append(category_layer(table, item, slide=slide))  # raises for an unknown column
    return out


def _is_numeric(col) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype)




def slide_rows(table, slide):
    """Rows of ``table`` that belong to ``slide`` (all rows when the table has no slide_id column)."""
    if table is None or "slide_id" not in table.columns:
        return table
    ids = set(table["slide_id"].astype(str).unique())
    if len(ids) <= 1:
        return table
    rows = table[table["slide_id"].astype(str) == slide.slide_id]
    log.info("table holds %d slides; showing the %d tiles of %s", len(ids), len(rows), slide.slide_id)
    return rows


def composite(base: np.ndarray, *overlays: np.ndarray) -> np.ndarray:
    """Alpha-blend (H, W, 4) uint8 RGBA ``overlays`` in order over the (H, W, 3) uint8 ``base``."""
    out = np.asarray(base, np.float32)[..., :3].copy()
    for rgba in overlays:
        if rgba.shape[:2] != out.shape[:2]:
            raise InvalidParameterError(f"overlay of shape {rgba.shape[:2]} does not match the base image {out.shape[:2]}")
        a = rgba[..., 3:4].astype(np.float32) / 255.0
        out = out * (1 - a) + rgba[..., :3].astype(np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def render_overview(slide, layers=(), max_size: int = 1024, table=None, mask=None, legend: bool = False
                    ) -> np.ndarray:
    """The slide's thumbnail (fitting ``max_size`` pixels) with ``layers`` (Layer objects or names, see
    :func:`resolve_layers`) blended on top at their opacity; returns (H, W, 3) uint8. ``legend``: each
    layer's legend (colour bar, classes) drawn to the right of the image."""
    thumb = slide.get_thumbnail(max_size, display="auto")  # the background as a person sees it
    W, H = slide.dimensions
    size = (thumb.shape[1], thumb.shape[0])
    resolved = resolve_layers(layers, table=slide_rows(table, slide), mask=mask, slide=slide)
    img = composite(thumb, *(lay.render_region((0, 0, W, H), size) for lay in resolved))
    return with_legends(img, resolved) if legend else img
