"""Annotations to label masks: :class:`LabelMap` (annotation labels → class indices, 0 =
background), :func:`rasterize` (a label mask of any level-0 box at any downsample: holes respected,
exclusion regions painted last) and :func:`tile_class_fractions` (per-tile class shares of a
TileTable, from one coarse mask per slide and summed-area tables: level 0 is never rasterised)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from wsi_lab.annotations.regions import AnnotationSet, Region
from wsi_lab.errors import DataError, InvalidParameterError

__all__ = ["LabelMap", "CAMELYON16", "CAMELYON17", "rasterize", "tile_class_fractions", "BACKGROUND"]

BACKGROUND = "background"


@dataclass(frozen=True)
class LabelMap:
    """How annotation labels become classes: ``classes`` (index 0 is the background) and ``mapping``
    (annotation label or group → class index). A label mapped to 0 is an exclusion: its regions are
    painted after all others (CAMELYON16's ``_2`` inside ``_0``/``_1``). ``unknown``: ``"error"``
    (a label outside the map raises :class:`DataError` naming the file and region) or ``"ignore"``;
    ``ignored``: labels that are known but never painted (``None`` in a mapping)."""

    classes: tuple[str, ...]
    mapping: Mapping[str, int]
    unknown: str = "error"
    ignored: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise InvalidParameterError(f"a label map needs a background and at least one class, got {self.classes}")
        if len(self.classes) > 255:
            raise InvalidParameterError(f"at most 255 classes fit a uint8 mask, got {len(self.classes)}")
        bad = {k: v for k, v in self.mapping.items() if not 0 <= int(v) < len(self.classes)}
        if bad:
            raise InvalidParameterError(f"label map values {bad} are outside the classes {list(self.classes)}")
        if self.unknown not in ("error", "ignore"):
            raise InvalidParameterError(f"unknown must be 'error' or 'ignore', got {self.unknown!r}")

    @classmethod
    def of(cls, spec: LabelMap | Mapping[str, Any] | str | None = None, labels: Iterable[str] = (),
           classes: Iterable[str] | None = None, unknown: str = "error") -> LabelMap:
        """A label map from ``spec``: a :class:`LabelMap`; a mapping ``{label: class name or index}``
        (names are given indices in order of first appearance after ``background``; ``None``: the label
        is ignored, e.g. QuPath's ``Unclassified``); a string
        ``"_0:1 _1:1 _2:0"`` (ASAP's label-map notation); or ``None``: CAMELYON16 when ``labels``
        are only ``_0``/``_1``/``_2``, CAMELYON17 for ``metastases``/``normal``, else every label is
        its own class. ``classes`` names the classes of integer maps (index 0 first)."""
        if isinstance(spec, LabelMap):
            return spec
        labels = sorted(set(labels))
        if isinstance(spec, str):
            spec = _parse_pairs(spec)
        if spec is None:
            if labels and set(labels) <= {"_0", "_1", "_2"}:
                return CAMELYON16
            if labels and set(labels) <= {"metastases", "normal"}:
                return CAMELYON17
            spec = {lab: (0 if lab.lower() == BACKGROUND else lab) for lab in labels}
        names: list[str] = [str(c) for c in classes] if classes is not None else [BACKGROUND]
        mapping: dict[str, int] = {}
        ignored: set[str] = set()
        for label, value in dict(spec).items():
            if value is None:
                ignored.add(str(label))
                continue
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise InvalidParameterError(f"label map: {label!r} maps to {value!r}; give a class name or index")
            if isinstance(value, int):
                while classes is None and len(names) <= value:
                    names.append(f"class_{len(names)}")
                mapping[str(label)] = value
            else:
                if value not in names:
                    if classes is not None:
                        raise InvalidParameterError(f"label map: class {value!r} is not one of {names}")
                    names.append(value)
                mapping[str(label)] = names.index(value)
        return cls(tuple(names), mapping, unknown, frozenset(ignored))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (``classes``, ``mapping``) that :meth:`of` rebuilds with ``classes=``."""
        return {"classes": list(self.classes), "mapping": dict(self.mapping)}

    def index_of(self, annotations: AnnotationSet, region: Region) -> int | None:
        """The class index of ``region`` (its label, then its parent groups); ``None`` when unmapped
        and ``unknown="ignore"``, else :class:`DataError` naming the file and the region."""
        for label in annotations.label_chain(region.label):
            if label in self.mapping:
                return int(self.mapping[label])
            if label in self.ignored:
                return None
        if self.unknown == "ignore":
            return None
        where = f"{annotations.source}: " if annotations.source is not None else ""
        raise DataError(f"{where}annotation {region.name or '?'!r} has label {region.label!r}, which the label map "
                        f"does not know (it maps {sorted(self.mapping)}); add it to the label map (null to "
                        "ignore it) or pass unknown='ignore'")


def _parse_pairs(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in re.split(r"[\s,;]+", text.strip()):
        if not part:
            continue
        label, sep, value = part.rpartition(":")
        if not sep or not label:
            raise InvalidParameterError(f"label map {text!r}: {part!r} is not label:class")
        out[label] = int(value) if value.lstrip("-").isdigit() else value
    return out


CAMELYON16 = LabelMap(("background", "tumor"), {"_0": 1, "_1": 1, "_2": 0, "Tumor": 1, "Exclusion": 0})
CAMELYON17 = LabelMap(("background", "tumor"), {"metastases": 1, "normal": 0})


def _paint_order(annotations: AnnotationSet, label_map: LabelMap) -> list[tuple[Region, int]]:
    todo = []
    for r in annotations.regions:
        idx = label_map.index_of(annotations, r)
        if idx is not None and r.is_area:
            todo.append((r, idx))
    return [t for t in todo if t[1] != 0] + [t for t in todo if t[1] == 0]  # exclusions last (stable)


def _fill(rings: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """Even-odd scanline fill of ``rings`` (mask-pixel coordinates, pixel ``i`` spans ``[i, i + 1)``):
    a pixel is set when its centre is inside, so holes (rings inside the exterior) come out empty.
    Sub-pixel exact (no vertex rounding), vectorised over edges."""
    a = np.concatenate([r for r in rings if len(r) >= 2])
    b = np.concatenate([np.roll(r, -1, axis=0) for r in rings if len(r) >= 2])
    lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    r0 = np.clip(np.ceil(lo - 0.5), 0, h).astype(np.int64)   # rows whose centre y + 0.5 lies in [lo, hi)
    r1 = np.clip(np.ceil(hi - 0.5), 0, h).astype(np.int64)
    counts = np.maximum(r1 - r0, 0)
    mask = np.zeros((h, w), bool)
    total = int(counts.sum())
    if total == 0:
        return mask
    edge = np.repeat(np.arange(len(a)), counts)
    row = r0[edge] + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
    yc = row + 0.5
    ax, ay, bx, by = a[edge, 0], a[edge, 1], b[edge, 0], b[edge, 1]
    xs = ax + (yc - ay) * (bx - ax) / (by - ay)
    order = np.lexsort((xs, row))
    row, xs = row[order], xs[order]
    if len(row) % 2:  # cannot happen for closed rings; guard against float ties
        return mask
    start = np.clip(np.ceil(xs[0::2] - 0.5), 0, w).astype(np.int64)
    stop = np.clip(np.ceil(xs[1::2] - 0.5), 0, w).astype(np.int64)
    diff = np.zeros((h, w + 1), np.int32)
    keep = stop > start
    np.add.at(diff, (row[0::2][keep], start[keep]), 1)
    np.add.at(diff, (row[0::2][keep], stop[keep]), -1)
    return np.cumsum(diff[:, :w], axis=1) > 0


def _draw(region: Region, out: np.ndarray, value: int, origin: tuple[float, float], ds: float) -> None:
    h, w = out.shape
    x0, y0, x1, y1 = region.bounds
    px0, py0 = max(0, math.floor((x0 - origin[0]) / ds) - 1), max(0, math.floor((y0 - origin[1]) / ds) - 1)
    px1, py1 = min(w, math.ceil((x1 - origin[0]) / ds) + 1), min(h, math.ceil((y1 - origin[1]) / ds) + 1)
    if px0 >= px1 or py0 >= py1:
        return
    shift = np.array([origin[0] / ds + px0, origin[1] / ds + py0])
    rings = [region.exterior / ds - shift, *(hole / ds - shift for hole in region.holes if len(hole) >= 3)]
    sel = _fill(rings, py1 - py0, px1 - px0)
    out[py0:py1, px0:px1][sel] = value


def rasterize(annotations: AnnotationSet, label_map: LabelMap | Mapping[str, Any] | str | None = None,
              size: tuple[int, int] | None = None, downsample: float = 1.0, origin: tuple[float, float] = (0, 0),
              dimensions: tuple[int, int] | None = None) -> np.ndarray:
    """A ``(height, width)`` uint8 label mask (class indices of ``label_map``; 0 background) of the
    level-0 box starting at ``origin`` (x, y), ``downsample`` level-0 pixels per mask pixel, ``size``
    ``(width, height)`` mask pixels (default: ``dimensions`` / ``downsample``, the whole slide). A
    pixel takes the class of the region covering its centre; holes are cut out; exclusion regions
    (class 0) are painted over the others. ``dimensions`` (the slide's level-0 size) also refuses
    annotations outside the slide."""
    lm = LabelMap.of(label_map, annotations.labels)
    if not (isinstance(downsample, (int, float)) and downsample > 0 and math.isfinite(downsample)):
        raise InvalidParameterError(f"downsample must be a positive number, got {downsample!r}")
    if dimensions is not None:
        annotations.check_inside(dimensions)
    if size is None:
        if dimensions is None:
            raise InvalidParameterError("rasterize needs size=(width, height) or the slide's dimensions")
        size = (max(1, math.ceil(dimensions[0] / downsample)), max(1, math.ceil(dimensions[1] / downsample)))
    w, h = int(size[0]), int(size[1])
    if w <= 0 or h <= 0:
        raise InvalidParameterError(f"mask size must be positive, got {size}")
    out = np.zeros((h, w), np.uint8)
    for region, value in _paint_order(annotations, lm):
        _draw(region, out, value, (float(origin[0]), float(origin[1])), float(downsample))
    return out


def _extent(rows: pd.DataFrame, downsamples: Any) -> np.ndarray:
    from wsi_lab.overlays import tile_extent

    return tile_extent(rows, downsamples)


def tile_class_fractions(table: pd.DataFrame,
                         annotations: Mapping[str, AnnotationSet | None] | Callable[[str], AnnotationSet | None],
                         label_map: LabelMap | Mapping[str, Any] | str | None = None, resolution: int = 16,
                         downsamples: Mapping[str, Any] | None = None, positive: Iterable[str] | None = None,
                         max_side: int = 8192) -> pd.DataFrame:
    """A copy of ``table`` with ``frac_<class>`` (share of each tile's area in each non-background
    class) and ``tumor_ratio`` (share in the ``positive`` classes, default: every non-background
    class). Per slide, the annotations are rasterised once over their bounding box at a coarse
    downsample (``resolution`` mask pixels along a tile side, at most ``max_side`` pixels a side) and
    tiles are summed with a summed-area table: no level-0 mask of a gigapixel slide is built.
    ``annotations``: ``{slide_id: AnnotationSet}`` or a function of the slide id (``None``: no
    annotations, every fraction 0). ``downsamples``: ``{slide_id: level downsamples or Slide}`` for
    tiles at levels > 0 (default: the table's metadata / slide headers)."""
    from wsi_lab.data.tile_reader import require_columns

    require_columns(table, ("slide_id", "x", "y", "read_size"), "tile_class_fractions")
    get = annotations if callable(annotations) else annotations.get
    found = {str(s): get(str(s)) for s in pd.unique(table["slide_id"])}
    labels = sorted({lab for a in found.values() if a is not None for lab in a.labels})
    lm = LabelMap.of(label_map, labels)
    names = list(lm.classes[1:])
    pos = set(names if positive is None else positive)
    unknown_pos = sorted(pos - set(names))
    if unknown_pos:
        raise InvalidParameterError(f"positive classes {unknown_pos} are not among {names}")
    fracs = np.zeros((len(table), len(lm.classes)), np.float64)
    sid_col = table["slide_id"].astype(str).to_numpy()
    for sid, aset in found.items():
        rows = np.flatnonzero(sid_col == sid)
        if aset is None or not aset.regions:
            continue
        sub = table.iloc[rows]
        ext = _extent(sub, (downsamples or {}).get(sid))
        x, y = sub["x"].to_numpy(float), sub["y"].to_numpy(float)
        b = aset.bounds()
        assert b is not None
        ds = max(float(ext.min()) / max(1, resolution), (b[2] - b[0]) / max_side, (b[3] - b[1]) / max_side, 1e-9)
        # the mask covers the annotations only (on the tiles' grid phase); tiles outside it count 0
        gx, gy = float(x.min()), float(y.min())
        ox, oy = gx + math.floor((b[0] - gx) / ds) * ds, gy + math.floor((b[1] - gy) / ds) * ds
        w, h = max(1, math.ceil((b[2] - ox) / ds) + 1), max(1, math.ceil((b[3] - oy) / ds) + 1)
        mask = rasterize(aset, lm, size=(w, h), downsample=ds, origin=(ox, oy))
        xa, xb = np.rint((x - ox) / ds).astype(np.int64), np.rint((x + ext - ox) / ds).astype(np.int64)
        ya, yb = np.rint((y - oy) / ds).astype(np.int64), np.rint((y + ext - oy) / ds).astype(np.int64)
        area = np.maximum((xb - xa) * (yb - ya), 1)
        xa, xb, ya, yb = np.clip(xa, 0, w), np.clip(xb, 0, w), np.clip(ya, 0, h), np.clip(yb, 0, h)
        for c in range(1, len(lm.classes)):
            sat = np.zeros((h + 1, w + 1), np.int64 if w * h >= 2**31 else np.int32)
            np.cumsum(mask == c, axis=1, dtype=sat.dtype, out=sat[1:, 1:])
            np.cumsum(sat[1:, 1:], axis=0, out=sat[1:, 1:])
            fracs[rows, c] = (sat[yb, xb] - sat[ya, xb] - sat[yb, xa] + sat[ya, xa]) / area
    out = table.copy()
    out.attrs = dict(table.attrs)
    for c, name in enumerate(lm.classes[1:], start=1):
        out[f"frac_{name}"] = fracs[:, c].astype(np.float32)
    out["tumor_ratio"] = fracs[:, [i for i, n in enumerate(lm.classes) if n in pos]].sum(1).clip(0, 1).astype(np.float32)
    return out
