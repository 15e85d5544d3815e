"""QuPath GeoJSON annotations in and out: a ``FeatureCollection`` (or one ``Feature``, or the bare
list of features older QuPath versions export) of ``Polygon`` / ``MultiPolygon`` geometries in
level-0 pixels, holes included; the label is ``properties.classification.name`` (QuPath 0.3+), or
a plain string ``classification`` (older exports), else :data:`~wsi_lab.annotations.regions.UNCLASSIFIED`.
Points (``Point``/``MultiPoint``) are kept as ``dot`` regions; lines are refused."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wsi_lab.annotations.regions import UNCLASSIFIED, AnnotationSet, Region, read_annotation_bytes
from wsi_lab.errors import DataError, InvalidParameterError

__all__ = ["read_geojson_annotations", "parse_geojson_annotations", "annotations_to_geojson",
           "write_geojson_annotations", "qupath_feature", "qupath_rgb", "QUPATH_OBJECT_TYPES"]

#: the ``objectType`` values QuPath 0.4+ imports
QUPATH_OBJECT_TYPES = ("annotation", "detection", "tile")


def qupath_rgb(color: str | Sequence[int]) -> list[int]:
    """``[r, g, b]`` (0–255 integers, what QuPath wants) of a ``#rrggbb`` string or an RGB(A) sequence."""
    if isinstance(color, str):
        c = color.lstrip("#")
        if len(c) != 6:
            raise InvalidParameterError(f"colour {color!r} is not #rrggbb")
        return [int(c[i:i + 2], 16) for i in (0, 2, 4)]
    return [int(v) for v in color][:3]


def qupath_feature(geometry: Mapping[str, Any], object_type: str = "annotation", label: str | None = None,
                   color: str | Sequence[int] | None = None, measurements: Mapping[str, float] | None = None,
                   name: str | None = None) -> dict[str, Any]:
    """One GeoJSON Feature as QuPath 0.4+ imports it: ``objectType``, ``classification {name, color}``
    (only with a ``label``; QuPath refuses a classification without a colour), a ``measurements`` map
    (finite numbers only) and ``name``. The one place the QuPath feature rule lives: the annotation
    writer here and the tile-prediction writer (:mod:`wsi_lab.infer.geojson`) both build with it."""
    if object_type not in QUPATH_OBJECT_TYPES:
        raise InvalidParameterError(f"objectType must be one of {QUPATH_OBJECT_TYPES}, got {object_type!r}")
    props: dict[str, Any] = {"objectType": object_type}
    if label is not None:
        if color is None:
            raise InvalidParameterError(f"classification {label!r} needs a colour (QuPath refuses one without)")
        props["classification"] = {"name": str(label), "color": qupath_rgb(color)}
    m = {str(k): float(v) for k, v in (measurements or {}).items() if math.isfinite(v)}
    if m:
        props["measurements"] = m
    if name:
        props["name"] = str(name)
    return {"type": "Feature", "geometry": dict(geometry), "properties": props}


def _features(data: Any, source: str | os.PathLike) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features")
        if not isinstance(feats, list):
            raise DataError.at(source, "FeatureCollection without a 'features' list")
        return feats
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    found = data.get("type") if isinstance(data, dict) else type(data).__name__
    raise DataError.at(source, f"not GeoJSON annotations (type {found!r}); expected a FeatureCollection, a Feature "
                               "or a list of features (QuPath: Export objects as GeoJSON)")


def _label(props: Mapping[str, Any]) -> tuple[str, str | None]:
    cls = props.get("classification")
    if isinstance(cls, Mapping) and cls.get("name"):
        color = cls.get("color")
        if isinstance(color, (list, tuple)) and len(color) >= 3:
            return str(cls["name"]), "#{:02x}{:02x}{:02x}".format(*(int(c) for c in color[:3]))
        return str(cls["name"]), None
    if isinstance(cls, str) and cls:
        return cls, None
    return UNCLASSIFIED, None


def parse_geojson_annotations(data: Any, source: str | os.PathLike = "<geojson>",
                              object_types: Sequence[str] | None = None) -> AnnotationSet:
    """The regions of parsed GeoJSON ``data`` (see the module docstring); errors name ``source`` and
    the feature (its index, and its ``name`` or ``id`` when it has one). ``object_types`` (e.g.
    ``("annotation",)``) keeps only features of those QuPath ``objectType`` values (a feature without
    one counts as an annotation), so the tiles of a predictions export can be skipped."""
    regions: list[Region] = []
    groups: dict[str, dict] = {}
    for n, f in enumerate(_features(data, source)):
        if not isinstance(f, Mapping) or f.get("type", "Feature") != "Feature":
            raise DataError.at(source, f"feature {n}: not a GeoJSON Feature")
        props = f.get("properties") or {}
        if not isinstance(props, Mapping):
            raise DataError.at(source, f"feature {n}: 'properties' is not an object")
        if object_types is not None and props.get("objectType", "annotation") not in object_types:
            continue
        name = str(props.get("name") or f.get("id") or f"feature {n}")
        what = f"feature {n} ({name!r})" if name != f"feature {n}" else f"feature {n}"
        label, color = _label(props)
        groups.setdefault(label, {"color": color, "parent": None})
        geom = f.get("geometry")
        if not isinstance(geom, Mapping):
            raise DataError.at(source, f"{what}: no geometry")
        gtype, coords = geom.get("type"), geom.get("coordinates")
        if not isinstance(coords, (list, tuple)):
            raise DataError.at(source, f"{what}: geometry {gtype!r} without a coordinates list")
        try:
            if gtype == "Polygon":
                polys = [coords]
            elif gtype == "MultiPolygon":
                polys = list(coords)
            elif gtype in ("Point", "MultiPoint"):
                pts = [coords] if gtype == "Point" else list(coords)
                regions.append(Region.of(label, pts, name=name, kind="dot", color=color, source=source))
                continue
            else:
                raise DataError.at(source, f"{what}: geometry {gtype!r} is not a Polygon, MultiPolygon or Point")
            for k, rings in enumerate(polys):
                if not rings:
                    raise DataError.at(source, f"{what}: an empty polygon")
                part = name if len(polys) == 1 else f"{name} part {k}"
                regions.append(Region.of(label, rings[0], rings[1:], name=part, kind="polygon", color=color,
                                         source=source))
        except TypeError as exc:
            raise DataError.at(source, f"{what}: malformed coordinates ({exc})") from exc
    return AnnotationSet(regions, groups, Path(source) if source != "<geojson>" else None)


def read_geojson_annotations(path: str | os.PathLike, object_types: Sequence[str] | None = None) -> AnnotationSet:
    """Read a QuPath GeoJSON file of annotations. Raises :class:`DataError` naming the file (and the
    feature at fault) when it is missing, not JSON, not GeoJSON or holds bad coordinates."""
    p = Path(path)
    raw = read_annotation_bytes(p)
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise DataError.at(p, f"not readable JSON ({exc})") from exc
    return parse_geojson_annotations(data, p, object_types)


def _rgb(color: str | None, fallback: tuple[int, int, int]) -> list[int]:
    if color and color.startswith("#") and len(color) == 7:
        return qupath_rgb(color)
    return list(fallback)


def _closed(ring) -> list[list[float]]:
    pts = [[round(float(x), 4), round(float(y), 4)] for x, y in ring]
    return pts + pts[:1]


def annotations_to_geojson(annotations: AnnotationSet, colors: Mapping[str, str] | None = None,
                           object_type: str = "annotation") -> dict[str, Any]:
    """A QuPath FeatureCollection of ``annotations``: one Polygon feature per area region (holes kept),
    one Point/MultiPoint per dot region, with ``objectType`` and ``classification {name, color}``."""
    palette = ((255, 0, 0), (0, 160, 0), (0, 0, 255), (200, 0, 200), (0, 170, 170), (230, 140, 0))
    seen: dict[str, list[int]] = {}
    feats = []
    for r in annotations.regions:
        if r.label not in seen:
            given = (colors or {}).get(r.label) or (annotations.groups.get(r.label) or {}).get("color") or r.color
            seen[r.label] = _rgb(given, palette[len(seen) % len(palette)])
        geom: dict[str, Any]
        if r.is_area:
            geom = {"type": "Polygon", "coordinates": [_closed(r.exterior), *(_closed(h) for h in r.holes)]}
        else:
            pts = [[float(x), float(y)] for x, y in r.exterior]
            geom = {"type": "Point", "coordinates": pts[0]} if len(pts) == 1 else {"type": "MultiPoint", "coordinates": pts}
        feats.append(qupath_feature(geom, object_type, r.label, seen[r.label], name=r.name or None))
    return {"type": "FeatureCollection", "features": feats}


def write_geojson_annotations(path: str | os.PathLike, annotations: AnnotationSet,
                              colors: Mapping[str, str] | None = None) -> Path:
    """Write :func:`annotations_to_geojson` of ``annotations`` to ``path`` atomically."""
    from wsi_lab.io import atomic_write_bytes

    p = Path(path)
    atomic_write_bytes(p, json.dumps(annotations_to_geojson(annotations, colors), separators=(",", ":")).encode())
    return p
