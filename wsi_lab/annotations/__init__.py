"""Slide annotations: ASAP / CAMELYON XML and QuPath GeoJSON in and out, label masks at any level,
per-tile class shares of a TileTable (``frac_<class>``, ``tumor_ratio``), and the balanced tile
sampler built on them. Level-0 pixel coordinates throughout (origin top left). No torch."""

from __future__ import annotations

from wsi_lab.annotations.asap import asap_xml, parse_asap, read_asap, write_asap
from wsi_lab.annotations.files import annotation_file, annotations_by_slide, read_annotations
from wsi_lab.annotations.geojson import (
    annotations_to_geojson,
    parse_geojson_annotations,
    read_geojson_annotations,
    write_geojson_annotations,
)
from wsi_lab.annotations.raster import BACKGROUND, CAMELYON16, CAMELYON17, LabelMap, rasterize, tile_class_fractions
from wsi_lab.annotations.regions import UNCLASSIFIED, AnnotationSet, Region
from wsi_lab.annotations.sampler import BalancedTileSampler, balanced_indices

__all__ = [
    "AnnotationSet", "Region", "UNCLASSIFIED", "BACKGROUND", "LabelMap", "CAMELYON16", "CAMELYON17",
    "read_annotations", "annotation_file", "annotations_by_slide",
    "read_asap", "parse_asap", "asap_xml", "write_asap",
    "read_geojson_annotations", "parse_geojson_annotations", "annotations_to_geojson", "write_geojson_annotations",
    "rasterize", "tile_class_fractions", "balanced_indices", "BalancedTileSampler",
]
