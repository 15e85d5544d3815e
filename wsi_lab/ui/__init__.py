"""Notebook views: ipywidgets/anywidget panels and the Lab dashboard that composes them.

``from wsi_lab.ui import Lab, SlideViewer, SlideBrowser, ThresholdTuner, TilingPanel, ReviewPanel, LatentExplorer,
register_panel``.
Importing this package needs the ``ui`` extra (ipywidgets, anywidget); names load on first use, so
``import wsi_lab.ui`` stays cheap, and the core never imports it.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "Lab": "wsi_lab.ui.lab", "LabState": "wsi_lab.ui.lab", "register_panel": "wsi_lab.ui.lab",
    "unregister_panel": "wsi_lab.ui.lab", "registered_panels": "wsi_lab.ui.lab",
    "SlideViewer": "wsi_lab.ui.viewer", "SlideBrowser": "wsi_lab.ui.browser",
    "ThresholdTuner": "wsi_lab.ui.tuner", "TilingPanel": "wsi_lab.ui.tiling_panel",
    "ReviewPanel": "wsi_lab.ui.review", "LatentExplorer": "wsi_lab.ui.explorer", "TileGallery": "wsi_lab.ui.gallery",
    "ScatterPlot": "wsi_lab.ui.scatter",
    "JobConsole": "wsi_lab.ui.console", "TrainingPanel": "wsi_lab.ui.console", "DoctorPanel": "wsi_lab.ui.doctor_panel",
    "register_job": "wsi_lab.ui.jobs", "registered_jobs": "wsi_lab.ui.jobs",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    """Lazy public names of the ui package (``from wsi_lab.ui import Lab``)."""
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'wsi_lab.ui' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
