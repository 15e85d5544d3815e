"""Predictions on slides: batch inference from a TileTable (``predict``), slide/patient scores
(``aggregate``), metrics with plots (``evaluate``), QuPath GeoJSON (``write_geojson``/``read_geojson``), slide masks of a segmentation model with ASAP XML /
GeoJSON regions (``segment_slides``).

Importing this package is light; torch loads when a model is run, scikit-learn when metrics are computed.
"""

from __future__ import annotations

from wsi_lab._lazy import lazy_exports

_NAMES = {
    "predict": "wsi_lab.infer.run", "predict_slides": "wsi_lab.infer.run",
    "PredictResult": "wsi_lab.infer.run", "write_predictions": "wsi_lab.infer.run",
    "read_predictions": "wsi_lab.infer.run",
    "aggregate": "wsi_lab.infer.scores", "prob_columns": "wsi_lab.infer.scores",
    "classification_metrics": "wsi_lab.infer.metrics", "evaluate": "wsi_lab.infer.metrics",
    "tiles_to_geojson": "wsi_lab.infer.geojson", "write_geojson": "wsi_lab.infer.geojson",
    "read_geojson": "wsi_lab.infer.geojson", "mask_contours": "wsi_lab.infer.geojson", "ModelServer": "wsi_lab.infer.serve",
    "segment_slides": "wsi_lab.infer.segment", "mask_to_annotations": "wsi_lab.infer.segment",
}

__all__, __getattr__, __dir__ = lazy_exports("wsi_lab.infer", _NAMES)
