"""Viewing: deep-zoom pyramids and overlay tiles over a slide (:mod:`~wsi_lab.viewing.deepzoom`) and the
wire contract the kernel, the browser and the server extension share (:mod:`~wsi_lab.viewing.wire`).
Both ``wsi_lab.server`` and ``wsi_lab.ui`` import from here; nothing here imports tornado or widgets."""

from wsi_lab.viewing.deepzoom import DeepZoom, LayerSnapshot, RenderableLayer, TileSpec, snapshot_layer
from wsi_lab.viewing.wire import (
    MAX_JSON_DEPTH,
    MAX_LAYER_BYTES,
    OVERLAP,
    QUALITY,
    TILE_SIZE,
    check_json_depth,
    display_from_token,
    display_token,
    is_slide_key,
    layer_from_payload,
    layer_payload_key,
    loads_json,
    relative_candidates,
    slide_key,
)

__all__ = ["DeepZoom", "TileSpec", "LayerSnapshot", "snapshot_layer", "RenderableLayer", "TILE_SIZE", "OVERLAP",
           "QUALITY", "MAX_LAYER_BYTES", "MAX_JSON_DEPTH", "slide_key", "is_slide_key", "relative_candidates",
           "layer_payload_key", "layer_from_payload", "check_json_depth", "loads_json", "display_token",
           "display_from_token"]
