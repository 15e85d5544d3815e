"""TIFF metadata helpers for the tifffile backend: what tiffslide does not cover for generic files.

* :func:`ome_mpp`: µm/px from OME-XML ``PhysicalSizeX/Y`` (with their units);
* :func:`associated_series`: unique names for the extra series of a generic TIFF (label, macro, ...),
  which tiffslide keys by the (often empty) series name;
* :func:`undecodable`: the codec problem of a page tifffile/imagecodecs cannot decode on this machine.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

#: µm per OME length unit
_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6,
              "pm": 1e-6, "in": 25400.0}
#: an associated image is small: larger extra series (a second scene, say) are not listed
MAX_ASSOCIATED_PIXELS = 2**24


def ome_mpp(ome_xml: str | None, image_index: int = 0) -> tuple[float, float] | None:
    """``(x, y)`` µm/px of image ``image_index`` from OME-XML ``Pixels`` attributes, or None when absent."""
    if not ome_xml:
        return None
    pixels = re.findall(r"<(?:\w+:)?Pixels\b([^>]*)>", ome_xml)
    if not pixels:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels[min(image_index, len(pixels) - 1)]))
    out = []
    for axis in ("X", "Y"):
        value = attrs.get(f"PhysicalSize{axis}")
        unit = attrs.get(f"PhysicalSize{axis}Unit", "µm")
        try:
            v = float(value) * _OME_UNITS[unit] if value is not None else None
        except (KeyError, ValueError):
            log.info("ignoring OME PhysicalSize%s=%r %r (unknown unit or value)", axis, value, unit)
            v = None
        out.append(v)
    x, y = out[0] or out[1], out[1] or out[0]
    if x is None or y is None:
        return None
    return (x, y)


def _guess_name(series: Any, index: int) -> str:
    text = ""
    try:
        text = (series.pages[0].description or "").lower()
    except Exception as exc:  # noqa: BLE001 - a page without a readable description
        log.debug("series %d: no description (%s)", index, exc)
    for word in ("label", "macro", "thumbnail", "overview", "barcode"):
        if word in text:
            return word
    return f"image{index}"


def associated_series(tf: Any, main_index: int) -> dict[str, Any]:
    """name -> series for the small extra series of ``tf`` (a tifffile.TiffFile) after series ``main_index``.

    Names are the series names (lower case) when present and unique, else guessed from the page
    description (label, macro, thumbnail, overview), else ``image<N>``."""
    out: dict[str, Any] = {}
    for i, s in enumerate(tf.series[main_index + 1:], start=1):
        try:
            shape = tuple(int(v) for v in s.shape)
        except Exception as exc:  # noqa: BLE001 - a series without a shape is skipped, logged
            log.debug("series %d: no shape (%s)", i, exc)
            continue
        if len(shape) < 2 or shape[0] * shape[1] > MAX_ASSOCIATED_PIXELS:
            continue
        name = (s.name or "").strip().lower() or _guess_name(s, i)
        base, n = name, 2
        while name in out:
            name, n = f"{base}{n}", n + 1
        out[name] = s
    return out


def undecodable(page: Any) -> str | None:
    """Why tifffile cannot decode ``page`` here (e.g. a codec imagecodecs lacks), or None when it can."""
    try:
        decode = page.decode
    except Exception as exc:  # noqa: BLE001 - the error is the reason returned
        return f"{type(exc).__name__}: {exc}"
    if getattr(decode, "__name__", "").startswith("decode_raise"):
        try:
            decode(b"", 0)
        except Exception as exc:  # noqa: BLE001 - the reason tifffile would give at the first read
            return f"{type(exc).__name__}: {exc}"
        return "unsupported"
    return None
