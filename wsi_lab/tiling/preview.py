"""What a set of tiling parameters gives on one slide, for previews (the tuner, notebooks).

Pipeline rules that widgets must not hold live here: which minimum-object-area keyword applies to a
slide (µm² when it has µm/px, else level-0 pixels²) and the detect → plan path that the tuner shows.
Sizes: ``min_object`` in µm² (or px² without µm/px); tile sizes in output pixels; ``mpp`` in µm/px.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from wsi_lab.errors import InvalidParameterError

__all__ = ["TilingPreview", "min_object_params", "preview_tiling"]


def min_object_params(slide: Any, area: float | None) -> dict[str, float]:
    """``{keyword: area}`` for :func:`wsi_lab.detect_tissue`'s smallest kept object: ``min_object_um2``
    when ``slide`` has µm/px, else ``min_object_px`` (level-0 pixels²). ``0``/``None`` means off: ``{}``."""
    if area is None or area == 0:
        return {}
    if not (isinstance(area, (int, float)) and area > 0):
        raise InvalidParameterError(f"minimum object area must be ≥ 0 (0 = off), got {area!r}")
    return {"min_object_um2" if getattr(slide, "mpp", None) else "min_object_px": float(area)}


@dataclass(frozen=True)
class TilingPreview:
    """The tissue mask (``None`` when the method found none) and the TileTable of the kept tiles."""

    mask: Any
    planned: pd.DataFrame | None

    @property
    def n_tiles(self) -> int:
        return 0 if self.planned is None else len(self.planned)


def preview_tiling(slide: Any, params: Any) -> TilingPreview:
    """Detect tissue on ``slide`` (an open :class:`~wsi_lab.slide.Slide`) with ``params`` (a validated
    :class:`~wsi_lab.tiling.TilingParams`) and plan the tiles it keeps. Fast on repeated calls: the
    slide's low-resolution features are cached by :func:`~wsi_lab.detect_tissue`. Typed errors
    (:class:`~wsi_lab.errors.NoTissueError`, bad values) are raised for the caller to show."""
    from wsi_lab.tiling.grid import plan_tiles
    from wsi_lab.tissue import detect_tissue

    mask = detect_tissue(slide, params.method, **params.method_params)
    planned = plan_tiles(slide, params.tile_size, params.mpp, mask=mask, min_tissue=params.min_tissue)
    return TilingPreview(mask, planned)
