"""ASAP XML (the CAMELYON16/17 annotation format) in and out.

Layout::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
          <Coordinates><Coordinate Order="0" X="1234.5" Y="678.9"/> ...</Coordinates>
        </Annotation>
      </Annotations>
      <AnnotationGroups><Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes/></Group></AnnotationGroups>
    </ASAP_Annotations>

Coordinates are level-0 pixels. CAMELYON16 groups ``_0`` and ``_1`` are tumour, ``_2`` marks
non-tumour regions inside them (exclusions); CAMELYON17 uses ``metastases`` (and ``normal``). ASAP
has no holes: :func:`write_asap` joins each hole to its polygon's outline by a zero-width cut
(``holes="bridge"``, the default: one ring that any even-odd or non-zero polygon fill, ASAP's
included, draws as the polygon minus its holes, so a mask survives the round trip exactly), or
writes each hole as its own annotation in ``hole_group`` (``holes="exclude"``: CAMELYON's ``_2``
convention; a region nested inside a hole is then erased by the exclusion).
Some CAMELYON16 files write decimal commas (``X="1234,5"``); they are read as points.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from wsi_lab.annotations.regions import AnnotationSet, Region, read_annotation_bytes
from wsi_lab.errors import DataError, InvalidParameterError

__all__ = ["read_asap", "parse_asap", "asap_xml", "write_asap", "bridge_holes", "AREA_TYPES"]

AREA_TYPES = {"polygon": "polygon", "rectangle": "rectangle", "spline": "spline", "dot": "dot",
              "pointset": "pointset", "measurement": "pointset"}
_DEFAULT_COLORS = ("#F4FA58", "#64FE2E", "#FF0000", "#0000FF", "#FF00FF", "#00FFFF")


def _number(text: str | None, what: str, source: str | os.PathLike) -> float:
    if text is None:
        raise DataError.at(source, f"{what}: missing coordinate")
    try:
        return float(text.strip().replace(",", "."))
    except ValueError as exc:
        raise DataError.at(source, f"{what}: coordinate {text!r} is not a number") from exc


def parse_asap(text: str | bytes, source: str | os.PathLike = "<xml>") -> AnnotationSet:
    """Parse ASAP XML text (see the module docstring); ``source`` names the file in errors."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DataError.at(source, f"not well-formed XML ({exc})") from exc
    if root.tag != "ASAP_Annotations":
        raise DataError.at(source, f"not ASAP XML: the root element is <{root.tag}>, not <ASAP_Annotations>")
    groups: dict[str, dict] = {}
    for g in root.iter("Group"):
        name = g.get("Name")
        if not name:
            raise DataError.at(source, "<Group> without a Name attribute")
        groups[name] = {"color": g.get("Color"), "parent": g.get("PartOfGroup") or None}
    regions = []
    for i, ann in enumerate(root.iter("Annotation")):
        name = ann.get("Name") or f"Annotation {i}"
        what = f"<Annotation Name={name!r}>"
        kind = AREA_TYPES.get((ann.get("Type") or "Polygon").lower())
        if kind is None:
            raise DataError.at(source, f"{what}: unknown Type {ann.get('Type')!r}; ASAP writes "
                                       f"{', '.join(sorted({k.title() for k in AREA_TYPES}))}")
        coords = ann.find("Coordinates")
        if coords is None:
            raise DataError.at(source, f"{what}: no <Coordinates> element")
        pts: list[tuple[int, float, float]] = []
        for c in coords.iter("Coordinate"):
            order = c.get("Order")
            pts.append((int(_number(order, what, source)) if order is not None else len(pts),
                        _number(c.get("X"), what, source), _number(c.get("Y"), what, source)))
        if not pts:
            raise DataError.at(source, f"{what}: no <Coordinate> points")
        pts.sort(key=lambda t: t[0])
        label = ann.get("PartOfGroup") or "None"
        regions.append(Region.of(label, [(x, y) for _, x, y in pts], name=name, kind=kind,
                                 color=ann.get("Color"), source=source))
    return AnnotationSet(regions, groups, Path(source) if source != "<xml>" else None)


def read_asap(path: str | os.PathLike) -> AnnotationSet:
    """Read an ASAP / CAMELYON XML file. Raises :class:`DataError` naming the file (and the
    ``<Annotation>`` at fault) when it is missing, not XML, not ASAP or holds bad coordinates."""
    p = Path(path)
    data = read_annotation_bytes(p)
    return parse_asap(data, p)


def _signed_area(r: np.ndarray) -> float:
    x, y = r[:, 0], r[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def bridge_holes(exterior: np.ndarray, holes: tuple[np.ndarray, ...] | list[np.ndarray]) -> np.ndarray:
    """One ring equal to ``exterior`` minus ``holes`` under even-odd and non-zero filling: each hole
    (oriented against the exterior) is spliced in at its vertex nearest the ring so far, through a
    zero-width cut that covers no pixel centre."""
    ring = np.asarray(exterior, np.float64)
    sign = np.sign(_signed_area(ring)) or 1.0
    for hole in holes:
        h = np.asarray(hole, np.float64)
        if len(h) < 3:
            continue
        if np.sign(_signed_area(h)) == sign:
            h = h[::-1]
        d = ((ring[:, None, :] - h[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        loop = np.concatenate([h[j:], h[:j], h[j:j + 1]])
        ring = np.concatenate([ring[:i + 1], loop, ring[i:]])
    return ring


def _fmt(v: float) -> str:
    return repr(round(float(v), 4))


def asap_xml(annotations: AnnotationSet, colors: Mapping[str, str] | None = None, holes: str = "bridge",
             hole_group: str = "_2") -> str:
    """The ASAP XML text of ``annotations``; ``colors`` per group (``#rrggbb``); ``holes``:
    ``"bridge"`` (cut into the outline, exact) or ``"exclude"`` (annotations of ``hole_group``)."""
    if holes not in ("bridge", "exclude"):
        raise InvalidParameterError(f"holes must be 'bridge' or 'exclude', got {holes!r}")
    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    used: dict[str, str] = {}

    def color_of(label: str, fallback: str | None) -> str:
        if label not in used:
            known = (colors or {}).get(label) or (annotations.groups.get(label) or {}).get("color") or fallback
            used[label] = known or _DEFAULT_COLORS[len(used) % len(_DEFAULT_COLORS)]
        return used[label]

    def add(name: str, kind: str, label: str, ring, color: str | None) -> None:
        el = ET.SubElement(anns, "Annotation", Name=name, Type=kind.title() if kind != "pointset" else "PointSet",
                           PartOfGroup=label, Color=color_of(label, color))
        cs = ET.SubElement(el, "Coordinates")
        for k, (x, y) in enumerate(ring):
            ET.SubElement(cs, "Coordinate", Order=str(k), X=_fmt(x), Y=_fmt(y))

    n = 0
    for r in annotations.regions:
        bridged = holes == "bridge" and bool(r.holes) and r.is_area
        add(r.name or f"Annotation {n}", r.kind, r.label, bridge_holes(r.exterior, r.holes) if bridged else r.exterior,
            r.color)
        n += 1
        for j, hole in enumerate(() if bridged else r.holes):
            add(f"{r.name or 'Annotation'} hole {j}", "polygon", hole_group, hole, None)
            n += 1
    grp = ET.SubElement(root, "AnnotationGroups")
    names = list(dict.fromkeys([*used, *annotations.groups]))
    for g in names:
        info = annotations.groups.get(g) or {}
        el = ET.SubElement(grp, "Group", Name=g, PartOfGroup=str(info.get("parent") or "None"),
                           Color=color_of(g, info.get("color")))
        ET.SubElement(el, "Attributes")
    ET.indent(root)
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_asap(path: str | os.PathLike, annotations: AnnotationSet, colors: Mapping[str, str] | None = None,
               holes: str = "bridge", hole_group: str = "_2") -> Path:
    """Write ``annotations`` as ASAP XML to ``path`` atomically (see :func:`asap_xml`)."""
    from wsi_lab.io import atomic_write_bytes

    p = Path(path)
    atomic_write_bytes(p, asap_xml(annotations, colors, holes, hole_group).encode("utf-8"))
    return p
