"""Turn WSI Lab overlays into napari layer data ``(data, kwargs, layer_type)`` aligned with the slide.

Geometry: napari puts the centre of level-0 pixel ``k`` at world ``k * scale``. An overlay rendered at
``d`` level-0 pixels per overlay pixel therefore gets ``scale * d`` and a translate of
``(d - 1) / 2 * scale``, so overlay pixel ``j`` spans level-0 ``[j*d, (j+1)*d)`` exactly.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from wsi_lab.overlays import GridLayer, Layer, MaskLayer, TileLayer
from wsi_lab.overlays import resolve_layers as resolve_overlays

log = logging.getLogger(__name__)

__all__ = ["resolve_overlays", "layer_data", "MAX_OVERLAY_SIDE", "MAX_SHAPES"]

#: longest side (pixels) of a rendered overlay image
MAX_OVERLAY_SIDE = 4096
#: a tile grid with at most this many tiles becomes a napari Shapes layer (else a rendered image)
MAX_SHAPES = 2000


def _render_downsample(layer: Layer, dims: tuple[int, int]) -> float:
    """Level-0 pixels per overlay pixel: ~4 overlay pixels per tile (native for masks), capped so the
    rendered image stays ≤ MAX_OVERLAY_SIDE."""
    W, H = dims
    cap = max(W, H) / MAX_OVERLAY_SIDE
    if isinstance(layer, MaskLayer):
        d = min(layer.downsample)
    elif isinstance(layer, TileLayer) and len(layer.size):
        d = float(np.min(layer.size)) / (8 if isinstance(layer, GridLayer) else 4)
    else:
        d = cap
    return max(d, cap, 1.0)


def layer_data(layer: Layer, dims: tuple[int, int], scale: tuple[float, float], units: str) -> tuple:
    """napari ``(data, kwargs, layer_type)`` for one overlay over a slide of level-0 ``dims`` =
    (width, height) whose level-0 (row, col) ``scale`` is in ``units``."""
    meta = {"wsi_lab_kind": layer.kind, "legend": layer.legend()}
    sy, sx = scale
    if isinstance(layer, GridLayer) and 0 < len(layer.x) <= MAX_SHAPES:
        # rectangle corners in level-0 (row, col); pixel k spans [k - 0.5, k + 0.5) in napari's frame
        y0, x0 = layer.y - 0.5, layer.x - 0.5
        y1, x1 = y0 + layer.size, x0 + layer.size
        rects = np.stack([np.stack([y0, x0], 1), np.stack([y0, x1], 1), np.stack([y1, x1], 1), np.stack([y1, x0], 1)], 1)
        color = "#{:02x}{:02x}{:02x}".format(*layer.color)
        kwargs = {"name": layer.name, "shape_type": "rectangle", "edge_color": color, "face_color": "transparent",
                  "edge_width": layer.line_width, "scale": scale, "units": units, "opacity": layer.opacity,
                  "metadata": meta}
        return list(rects), kwargs, "shapes"
    W, H = dims
    d = _render_downsample(layer, dims)
    ow, oh = max(1, math.ceil(W / d)), max(1, math.ceil(H / d))
    rgba = layer.render_region((0, 0, ow * d, oh * d), (ow, oh), apply_opacity=False)
    kwargs = {"name": layer.name, "rgb": True, "scale": (sy * d, sx * d),
              "translate": ((d - 1) / 2 * sy, (d - 1) / 2 * sx), "units": units, "opacity": layer.opacity,
              "blending": "translucent", "metadata": {**meta, "downsample": d}}
    return rgba, kwargs, "image"
