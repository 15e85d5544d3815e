"""napari integration: :func:`open_in_napari` and the npe2 plugin (``napari.yaml``: a reader for
.svs/.tif/.tiff/.ndpi/.mrxs/.scn/.bif, and .parquet predictions with their slide and prediction layers).
napari itself is imported only when a viewer is made, and a missing napari raises :class:`~wsi_lab.errors.MissingDependencyError` with the install hint."""

from wsi_lab.napari._layers import layer_data, resolve_overlays
from wsi_lab.napari._pyramid import slide_pyramid, slide_scale
from wsi_lab.napari._reader import napari_get_reader, read_prediction_layers, read_slides
from wsi_lab.napari._viewer import open_in_napari, run_or_screenshot, slide_layer_data

__all__ = ["open_in_napari", "run_or_screenshot", "slide_pyramid", "slide_scale", "slide_layer_data", "layer_data",
           "resolve_overlays", "napari_get_reader", "read_slides",
           "read_prediction_layers"]
