"""Predictions on slides: batch inference from a TileTable (``predict``), slide/patient scores
(``aggregate``), metrics with plots (``evaluate``), QuPath GeoJSON (``write_geojson``/``read_geojson``).

Importing this package is light; torch loads when a model is run, scikit-learn when metrics are computed.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "predict": "wsi_lab.infer.run", "predict_slides": "wsi_lab.infer.run",
    "PredictResult": "wsi_lab.infer.run", "write_predictions": "wsi_lab.infer.run",
    "read_predictions": "wsi_lab.infer.run",
    "aggregate": "wsi_lab.infer.scores", "prob_columns": "wsi_lab.infer.scores",
    "classification_metrics": "wsi_lab.infer.metrics", "evaluate": "wsi_lab.infer.metrics",
    "tiles_to_geojson": "wsi_lab.infer.geojson", "write_geojson": "wsi_lab.infer.geojson",
    "read_geojson": "wsi_lab.infer.geojson", "mask_contours": "wsi_lab.infer.geojson", "ModelServer": "wsi_lab.infer.serve",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_lab.infer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
