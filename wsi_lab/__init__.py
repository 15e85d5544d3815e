"""WSI Lab: gigapixel whole-slide images in JupyterLab.

slide → tissue mask → tile table → (tiles / features / shards) → training → predictions → overlays.
``import wsi_lab`` stays light: heavy parts (Dask, torch, widgets, napari) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wsi_lab import errors
from wsi_lab._version import __version__
from wsi_lab.slide import Slide, SlideInfo, find_slides, open_slide

# name -> module that defines it; imported on first attribute access (PEP 562)
_LAZY: dict[str, str] = {}
_LAZY.update({n: "wsi_lab.overlays" for n in ("Layer", "tile_extent", "mask_layer", "grid_layer", "heatmap_layer", "category_layer", "latent_rgb_layer", "heatmap", "render_overview")} | {"open_in_napari": "wsi_lab.napari"})  # overlays, napari
_LAZY.update({n: "wsi_lab.ui.lab" for n in ("Lab", "register_panel")} | {"SlideBrowser": "wsi_lab.ui.browser", "ThresholdTuner": "wsi_lab.ui.tuner", "TilingPanel": "wsi_lab.ui.tiling_panel"})  # ui

_LAZY.update({n: "wsi_lab.tissue" for n in ("detect_tissue", "TissueMask")} | {n: "wsi_lab.tiling" for n in ("plan_tiles", "run_tiling", "start_tiling", "TilingParams", "TwoStage", "TilingResult", "compare_tile_sets", "apply_fine_pass")} | {n: "wsi_lab.data.table" for n in ("read_table", "write_table", "default_patient_id")} | {"ProgressEvent": "wsi_lab.progress"})  # tissue, tiling, table

_LAZY.update({n: "wsi_lab.data" for n in ("read_labels", "labels_from_folders", "attach_labels", "split_by_patient", "check_no_leakage", "export_jpeg", "export_tfrecord", "iter_tfrecord", "TileDataset")})  # labels, splits, exports, torch dataset

_LAZY.update({"SlideViewer": "wsi_lab.ui.viewer", "DeepZoom": "wsi_lab.deepzoom"})  # deep-zoom viewer

__all__ = ["__version__", "errors", "Slide", "SlideInfo", "open_slide", "find_slides", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    pass
