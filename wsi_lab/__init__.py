"""WSI Lab: gigapixel whole-slide images in JupyterLab.

slide → tissue mask → tile table → (tiles / features / shards) → training → predictions → overlays.
``import wsi_lab`` stays light: heavy parts (Dask, torch, widgets, napari) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from wsi_lab import errors
from wsi_lab._version import __version__
from wsi_lab.slide import Slide, SlideInfo, find_slides, open_slide

# The public API beyond slides, by module; each name is imported on first attribute access (PEP 562)
_PUBLIC: dict[str, tuple[str, ...]] = {
    "wsi_lab.tissue": ("detect_tissue", "TissueMask"),
    "wsi_lab.tiling": ("plan_tiles", "run_tiling", "start_tiling", "TilingParams", "TwoStage", "TilingResult",
                       "compare_tile_sets", "apply_fine_pass"),
    "wsi_lab.data.table": ("read_table", "write_table", "default_patient_id"),
    "wsi_lab.data": ("read_labels", "labels_from_folders", "attach_labels", "split_by_patient", "check_no_leakage",
                     "export_jpeg", "export_tfrecord", "iter_tfrecord", "TileDataset"),
    "wsi_lab.runs": ("ProgressEvent",),
    "wsi_lab.overlays": ("Layer", "tile_extent", "mask_layer", "grid_layer", "heatmap_layer", "category_layer",
                         "latent_rgb_layer", "heatmap", "render_overview"),
    "wsi_lab.viewing": ("DeepZoom",),
    "wsi_lab.train": ("JobSpec", "launch"),
    "wsi_lab.infer": ("predict", "aggregate", "evaluate"),
    "wsi_lab.ui.viewer": ("SlideViewer",),
    "wsi_lab.ui.lab": ("Lab", "register_panel"),
    "wsi_lab.ui.browser": ("SlideBrowser",),
    "wsi_lab.ui.tuner": ("ThresholdTuner",),
    "wsi_lab.ui.tiling_panel": ("TilingPanel",),
    "wsi_lab.napari": ("open_in_napari",),
}
_LAZY: dict[str, str] = {name: module for module, names in _PUBLIC.items() for name in names}

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
