"""Finding and reading annotation files: :func:`read_annotations` picks the reader by suffix (or by
content), :func:`annotation_file` finds a slide's file in a folder (``<slide_id>.xml``,
``.geojson`` or ``.json``), :func:`annotations_by_slide` loads them for every slide of a table."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from wsi_lab.annotations.asap import parse_asap
from wsi_lab.annotations.geojson import parse_geojson_annotations
from wsi_lab.annotations.regions import AnnotationSet, read_annotation_bytes
from wsi_lab.errors import DataError

__all__ = ["read_annotations", "annotation_file", "annotations_by_slide", "SUFFIXES"]

SUFFIXES = (".xml", ".geojson", ".json")


def read_annotations(path: str | os.PathLike) -> AnnotationSet:
    """Read ASAP XML (``.xml``) or QuPath GeoJSON (``.geojson``/``.json``); another suffix is read by
    its first character (``<`` XML, else JSON). Errors: :class:`DataError` naming the file."""
    import json

    p = Path(path)
    data = read_annotation_bytes(p)
    xml = p.suffix.lower() == ".xml" or (p.suffix.lower() not in SUFFIXES and data.lstrip()[:1] == b"<")
    if xml:
        return parse_asap(data, p)
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError.at(p, f"not readable JSON ({exc})") from exc
    return parse_geojson_annotations(parsed, p)


def annotation_file(folder: str | os.PathLike, slide_id: str) -> Path | None:
    """``folder/<slide_id>{.xml,.geojson,.json}`` (first that exists), or ``None``."""
    for suffix in SUFFIXES:
        p = Path(folder) / f"{slide_id}{suffix}"
        if p.is_file():
            return p
    return None


def annotations_by_slide(source: str | os.PathLike, slide_ids: Iterable[str],
                         required: bool = False) -> dict[str, AnnotationSet | None]:
    """``{slide_id: AnnotationSet or None}`` from a folder of per-slide files, or one file for a
    single slide. ``required``: a slide without a file raises :class:`DataError` (else ``None``:
    a slide with no annotated region, every pixel background)."""
    src = Path(source)
    ids = [str(s) for s in slide_ids]
    if src.is_file():
        if len(ids) != 1:
            raise DataError.at(src, f"one annotation file for {len(ids)} slides {ids[:5]}; give a folder of "
                                    "<slide_id>.xml / .geojson files")
        return {ids[0]: read_annotations(src)}
    if not src.is_dir():
        raise DataError.at(src, "no such annotation file or folder")
    out: dict[str, AnnotationSet | None] = {}
    for sid in ids:
        p = annotation_file(src, sid)
        if p is None and required:
            raise DataError.at(src, f"no annotation file for slide {sid!r} (looked for {sid}.xml, .geojson, .json)")
        out[sid] = read_annotations(p) if p is not None else None
    return out
