"""GeoJSON that QuPath (0.4+) imports: a FeatureCollection of tile squares in level-0 pixels (origin
top left) with QuPath's properties (``objectType``, ``classification: {"name", "color": [r, g, b]}``,
``measurements``), plus tissue-mask contours and annotation regions (read from ASAP XML or GeoJSON by
:mod:`wsi_lab.annotations`) as annotation polygons; and the reader back. Each feature is built by
:func:`wsi_lab.annotations.geojson.qupath_feature`, the one QuPath rule."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi_lab.annotations.geojson import annotations_to_geojson, qupath_feature, qupath_rgb
from wsi_lab.errors import DataError, InvalidParameterError

__all__ = ["tiles_to_geojson", "mask_contours", "write_geojson", "read_geojson", "OBJECT_TYPES"]

OBJECT_TYPES = ("tile", "detection", "annotation")


def _class_colors(values: Sequence[str], colors: Mapping[str, Any] | None) -> dict[str, list[int]]:
    from wsi_lab.overlays import category_colors

    auto = category_colors(len(values))
    out = {}
    for v, a in zip(values, auto):
        c = (colors or {}).get(v, a)
        out[v] = qupath_rgb(c)
    return out


def _ring(x: float, y: float, s: float) -> list[list[float]]:
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]


def mask_contours(mask: Any, downsample: float | None = None) -> list[list[list[list[float]]]]:
    """Polygons (GeoJSON coordinates: ``[exterior, *holes]``, level-0 px) tracing the pixel edges of a
    boolean mask (a TissueMask or an array with ``downsample``): exact, closed, exteriors clockwise on
    screen (y down) and holes the other way."""
    arr = np.asarray(getattr(mask, "mask", mask), bool)
    ds = float(downsample if downsample is not None else getattr(mask, "downsample", 1.0))
    p = np.pad(arr, 1)
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # directed boundary edges with the mask on the right (screen coordinates, y down), found with array
    # operations; only the boundary (not every mask pixel) is walked in Python
    inner = p[1:-1, 1:-1]
    sides = (  # (pixels whose neighbour on this side is empty, edge start offset, edge end offset)
        (inner & ~p[:-2, 1:-1], (0, 0), (1, 0)),    # top
        (inner & ~p[1:-1, 2:], (1, 0), (1, 1)),     # right
        (inner & ~p[2:, 1:-1], (1, 1), (0, 1)),     # bottom
        (inner & ~p[1:-1, :-2], (0, 1), (0, 0)),    # left
    )
    for hit, (sx, sy), (ex, ey) in sides:
        ys, xs = np.nonzero(hit)
        for x, y in zip(xs.tolist(), ys.tolist()):
            edges.setdefault((x + sx, y + sy), []).append((x + ex, y + ey))
    rings = []
    while edges:
        start = next(iter(edges))
        ring, cur = [start], start
        while True:
            nxt = edges[cur].pop()
            if not edges[cur]:
                del edges[cur]
            if nxt == start:
                break
            ring.append(nxt)
            cur = nxt
        ring = [pt for i, pt in enumerate(ring) if not _collinear(ring[i - 1], pt, ring[(i + 1) % len(ring)])]
        rings.append(ring)
    exteriors: list[tuple[float, list]] = []
    holes: list[tuple[float, list]] = []
    for ring in rings:
        area = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:] + ring[:1])) / 2
        (exteriors if area > 0 else holes).append((abs(area), ring))
    polys = [[ring] for _, ring in sorted(exteriors, key=lambda t: -t[0])]
    # a hole belongs to the smallest exterior that holds it (bounding boxes first: few rings are tested)
    boxes = [(min(x for x, _ in pl[0]), min(y for _, y in pl[0]), max(x for x, _ in pl[0]), max(y for _, y in pl[0]))
             for pl in polys]
    by_size = sorted(range(len(polys)), key=lambda i: _area(polys[i][0]))
    for _, hole in holes:
        hx, hy = hole[0][0], hole[0][1] + 0.5  # a point just inside the hole's first (left) edge
        for i in by_size:
            x0, y0, x1, y1 = boxes[i]
            if x0 <= hx <= x1 and y0 <= hy <= y1 and _inside(polys[i][0], hx, hy):
                polys[i].append(hole)
                break
    return [[[[float(x * ds), float(y * ds)] for x, y in ring + ring[:1]] for ring in poly] for poly in polys]


def _collinear(a, b, c) -> bool:
    return (b[0] - a[0]) * (c[1] - b[1]) == (b[1] - a[1]) * (c[0] - b[0])


def _area(ring) -> float:
    return abs(sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:] + ring[:1])) / 2)


def _inside(ring, x: float, y: float) -> bool:
    """Even-odd ray casting, vectorised over the ring's edges."""
    a = np.asarray(ring, np.float64)
    b = np.roll(a, -1, axis=0)
    crosses = (a[:, 1] > y) != (b[:, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return bool(np.count_nonzero(crosses & (x < xs)) % 2)


def tiles_to_geojson(table: pd.DataFrame, column: str | None = "pred", measurements: Sequence[str] | None = None,
                     object_type: str = "tile", colors: Mapping[str, Any] | None = None, mask: Any = None,
                     mask_name: str = "Tissue", annotations: Any = None) -> dict[str, Any]:
    """The FeatureCollection of ``table``'s tiles: one ``Polygon`` each (level-0 px), classified by
    ``column`` (None: unclassified), ``measurements`` from numeric columns (default: every
    ``prob_<class>``, ``attention``, ``recon_error``); ``mask`` adds its contours as annotations, and
    ``annotations`` (a :class:`wsi_lab.annotations.AnnotationSet`) its regions, holes kept."""
    from wsi_lab.overlays import tile_extent

    if object_type not in ("tile", "detection"):
        raise InvalidParameterError(f"object_type must be 'tile' or 'detection' for tiles, got {object_type!r}")
    if column is not None and column not in table.columns:
        raise InvalidParameterError(f"no column {column!r} to classify tiles by; columns are {list(table.columns)}")
    if measurements is None:
        measurements = [c for c in table.columns if str(c).startswith("prob_") or c in ("attention", "recon_error")]
    bad = [c for c in measurements if c not in table.columns or not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise InvalidParameterError(f"measurement column(s) {bad} are missing or not numeric")
    size = tile_extent(table)
    feats: list[dict[str, Any]] = []
    values = table[column].astype(str).to_numpy() if column is not None else None
    palette = _class_colors(sorted(set(values)) if values is not None else [], colors)
    meas = {c: table[c].to_numpy(np.float64) for c in measurements}
    for i, (x, y, s) in enumerate(zip(table["x"].to_numpy(float), table["y"].to_numpy(float), size)):
        label = values[i] if values is not None else None
        feats.append(qupath_feature({"type": "Polygon", "coordinates": [_ring(x, y, float(s))]}, object_type, label,
                                    palette[label] if label is not None else None,
                                    {c: v[i] for c, v in meas.items()}))
    if mask is not None:
        color = _class_colors([mask_name], {mask_name: (colors or {}).get(mask_name, "#2ca02c")})[mask_name]
        for poly in mask_contours(mask):
            feats.append(qupath_feature({"type": "Polygon", "coordinates": poly}, "annotation", mask_name, color))
    if annotations is not None:
        feats.extend(annotations_to_geojson(annotations, colors)["features"])
    return {"type": "FeatureCollection", "features": feats}


def write_geojson(path: str | os.PathLike, table: pd.DataFrame, **options: Any) -> Path:
    """Write :func:`tiles_to_geojson` of ``table`` to ``path`` atomically."""
    from wsi_lab.io import atomic_write_bytes

    data = tiles_to_geojson(table, **options)
    atomic_write_bytes(path, json.dumps(data, separators=(",", ":")).encode())
    return Path(path)


def read_geojson(path: str | os.PathLike) -> pd.DataFrame:
    """One row per feature of a GeoJSON FeatureCollection: ``object_type``, ``classification``,
    ``color``, the bounding box (``x``, ``y``, ``width``, ``height``, level-0 px), ``geometry`` (the
    GeoJSON geometry) and one column per measurement. Raises :class:`DataError` naming the file when it
    is not JSON or not a FeatureCollection."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise DataError.at(p, "no such GeoJSON file") from exc
    except (OSError, ValueError) as exc:
        raise DataError.at(p, f"not readable JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or not isinstance(data.get("features"), list):
        found = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise DataError.at(p, f"not a GeoJSON FeatureCollection (type is {found!r}); QuPath exports one with "
                              "'Export objects as GeoJSON' (FeatureCollection option)")
    rows = []
    for n, f in enumerate(data["features"]):
        geom = (f or {}).get("geometry") or {}
        coords = geom.get("coordinates")
        gtype = geom.get("type")
        if gtype not in ("Polygon", "MultiPolygon", "Point", "MultiPoint") or not coords:
            raise DataError.at(p, f"feature {n}: geometry {gtype!r} is not a Polygon, MultiPolygon or Point")
        try:
            if gtype == "Polygon":
                rings = coords
            elif gtype == "MultiPolygon":
                rings = [r for pl in coords for r in pl]
            else:
                rings = [[coords]] if gtype == "Point" else [coords]
            pts = np.array([pt for ring in rings for pt in ring], float).reshape(-1, 2)
        except (TypeError, ValueError) as exc:
            raise DataError.at(p, f"feature {n}: malformed {gtype} coordinates ({exc})") from exc
        props = f.get("properties") or {}
        cls = props.get("classification") or {}
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        rows.append({"object_type": props.get("objectType"), "classification": cls.get("name"),
                     "color": cls.get("color"), "x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0,
                     "geometry": geom, **{str(k): v for k, v in (props.get("measurements") or {}).items()}})
    return pd.DataFrame(rows)
