"""The in-memory form of slide annotations: :class:`Region` (one polygon with holes, level-0 px) and
:class:`AnnotationSet` (the regions of one slide plus their groups), read from ASAP XML or QuPath
GeoJSON and written back to either. No torch, no geometry library: numpy arrays of ``(x, y)``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from wsi_lab.errors import DataError

__all__ = ["Region", "AnnotationSet", "UNCLASSIFIED"]

#: the label of a QuPath object without a classification
UNCLASSIFIED = "Unclassified"


def _ring(points: Iterable, what: str, source: str | os.PathLike | None) -> np.ndarray:
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _err(source, f"{what}: coordinates are not numbers ({exc})") from exc
    if arr.ndim != 2 or arr.shape[1] < 2 or len(arr) == 0:
        raise _err(source, f"{what}: expected a list of (x, y) points, got shape {arr.shape}")
    arr = arr[:, :2]
    if not np.isfinite(arr).all():
        raise _err(source, f"{what}: coordinates hold NaN or infinity")
    if len(arr) > 1 and np.array_equal(arr[0], arr[-1]):
        arr = arr[:-1]  # GeoJSON rings repeat their first point; keep each point once
    return np.ascontiguousarray(arr)


def _err(source: str | os.PathLike | None, reason: str) -> DataError:
    return DataError.at(source, reason) if source is not None else DataError(reason)


@dataclass(frozen=True)
class Region:
    """One annotated region in level-0 pixels (origin top left): ``exterior`` an ``(N, 2)`` array of
    ``(x, y)`` points (not repeating the first), ``holes`` rings cut out of it; ``label`` the ASAP
    group (``PartOfGroup``) or QuPath classification name; ``name`` the element's own name (shown in
    error messages); ``kind`` ``polygon``, ``rectangle``, ``spline``, ``dot`` or ``pointset`` (the last
    two are points, not areas: they are never rasterised)."""

    label: str
    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()
    name: str = ""
    kind: str = "polygon"
    color: str | None = None

    @classmethod
    def of(cls, label: str, exterior: Iterable, holes: Iterable[Iterable] = (), name: str = "", kind: str = "polygon",
           color: str | None = None, source: str | os.PathLike | None = None) -> Region:
        """Build a region from plain point lists, checking them (errors name ``source`` and ``name``)."""
        what = f"annotation {name!r}" if name else "annotation"
        ext = _ring(exterior, what, source)
        hs = tuple(_ring(h, f"{what} hole {i}", source) for i, h in enumerate(holes))
        return cls(str(label), ext, hs, str(name), kind, color)

    @property
    def is_area(self) -> bool:
        """Whether the region covers an area (polygons, rectangles, splines with ≥ 3 points)."""
        return self.kind not in ("dot", "pointset") and len(self.exterior) >= 3

    @cached_property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in level-0 pixels (computed once)."""
        x0, y0 = self.exterior.min(0)
        x1, y1 = self.exterior.max(0)
        return float(x0), float(y0), float(x1), float(y1)

    def area(self) -> float:
        """Area in level-0 px² (holes subtracted; shoelace formula)."""
        def shoelace(r: np.ndarray) -> float:
            x, y = r[:, 0], r[:, 1]
            return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2

        return shoelace(self.exterior) - sum(shoelace(h) for h in self.holes) if self.is_area else 0.0


@dataclass
class AnnotationSet:
    """The annotations of one slide: ``regions`` in file order, ``groups`` (name → ``{"color",
    "parent"}``; ASAP groups may nest through ``parent``), ``source`` the file they came from."""

    regions: list[Region] = field(default_factory=list)
    groups: dict[str, dict] = field(default_factory=dict)
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.regions)

    @property
    def labels(self) -> list[str]:
        """The distinct region labels, sorted."""
        return sorted({r.label for r in self.regions})

    def label_chain(self, label: str) -> list[str]:
        """``label`` then its parent groups (ASAP ``Group PartOfGroup``), nearest first."""
        chain, seen = [label], {label}
        while True:
            parent = (self.groups.get(chain[-1]) or {}).get("parent")
            if not parent or parent in seen or parent == "None":
                return chain
            chain.append(parent)
            seen.add(parent)

    def bounds(self) -> tuple[float, float, float, float] | None:
        """The bounding box ``(x0, y0, x1, y1)`` of every region (level-0 px), ``None`` when empty."""
        if not self.regions:
            return None
        b = np.array([r.bounds for r in self.regions])
        return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())

    def check_inside(self, dimensions: tuple[int, int], tolerance: float = 1.0) -> None:
        """Raise :class:`DataError` naming the file and the first region with a point outside a slide of
        ``dimensions`` (level-0 ``(width, height)``), ``tolerance`` pixels allowed past the edge."""
        w, h = dimensions
        for r in self.regions:
            x0, y0, x1, y1 = r.bounds
            if x0 < -tolerance or y0 < -tolerance or x1 > w + tolerance or y1 > h + tolerance:
                raise _err(self.source, f"annotation {r.name or r.label!r} (group {r.label!r}) reaches "
                                        f"({x0:.0f}, {y0:.0f})-({x1:.0f}, {y1:.0f}), outside the {w}x{h} slide; "
                                        "the annotations belong to another slide or another level")

    def with_labels(self, mapping: Mapping[str, str]) -> AnnotationSet:
        """A copy with region labels renamed through ``mapping`` (labels not in it are kept)."""
        regions = [Region(mapping.get(r.label, r.label), r.exterior, r.holes, r.name, r.kind, r.color)
                   for r in self.regions]
        return AnnotationSet(regions, dict(self.groups), self.source)


def read_annotation_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an annotation file; :class:`DataError` naming the file when it is missing or unreadable."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError as exc:
        raise DataError.at(p, "no such annotation file") from exc
    except OSError as exc:
        raise DataError.at(p, f"cannot read ({exc})") from exc
