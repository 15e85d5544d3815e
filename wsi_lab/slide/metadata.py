"""Normalising slide metadata from any backend: µm/px, magnification, vendor.

Rules: values come from the file's own metadata only. A µm/px outside a plausible range for
microscopy (for example the 72 dpi default that many image writers put into TIFF headers, which would
read as 352.8 µm/px) is reported as unknown (``None``) rather than trusted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

#: plausible range of µm/px for a whole-slide image level 0 (0.02 = super-resolution, 50 = 0.2x)
MPP_RANGE = (0.02, 50.0)


def to_float(value: Any) -> float | None:
    """Parse a metadata value as a finite positive float, or ``None``."""
    if value is None:
        return None
    try:
        f = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def plausible_mpp(mpp_x: Any, mpp_y: Any, source: str = "") -> tuple[float, float] | None:
    """Return ``(mpp_x, mpp_y)`` when both parse and are plausible, else ``None`` (with a log line)."""
    x, y = to_float(mpp_x), to_float(mpp_y)
    if x is None:  # one axis only: assume square pixels, as vendors do
        if y is None:
            return None
        x = y
    elif y is None:
        y = x
    lo, hi = MPP_RANGE
    if not (lo <= x <= hi and lo <= y <= hi):
        log.info("ignoring implausible µm/px (%s, %s) from %s; treat the slide as having no µm/px",
                 mpp_x, mpp_y, source or "metadata")
        return None
    return (x, y)


def first_present(props: Mapping[str, Any], *keys: str) -> Any:
    """First value among ``keys`` that is present and not None/empty in ``props``."""
    for key in keys:
        value = props.get(key)
        if value not in (None, "", "None"):
            return value
    return None


def stringify(props: Mapping[str, Any]) -> dict[str, str]:
    """OpenSlide-style properties: every value a string, ``None`` values dropped."""
    return {str(k): str(v) for k, v in props.items() if v is not None}
