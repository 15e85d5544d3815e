"""Grid planning: which tiles of a slide to read, as a TileTable (no pixels read except the mask's).

The grid is computed with numpy over all tile positions at once and the tissue fraction of every tile
comes from the mask's integral image, so planning a gigapixel slide takes well under a second.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from wsi_lab.errors import InvalidParameterError, MissingMPPError
from wsi_lab.tiling.params import MAX_TILE_SIZE, TwoStage
from wsi_lab.tissue import threshold_params

log = logging.getLogger(__name__)

__all__ = ["plan_tiles", "TileGeometry", "tile_geometry", "grid_origins", "grid_size", "MAX_UPSAMPLE",
           "MAX_GRID_TILES"]

#: the most a tile may be enlarged from the slide's native µm/px (finer targets are refused)
MAX_UPSAMPLE = 2.0
#: the largest grid ``plan_tiles`` plans by default (~5 million tiles: ~0.5 GB of planning arrays);
#: pass ``max_grid_tiles=`` to plan more
MAX_GRID_TILES = 5_000_000


@dataclass(frozen=True)
class TileGeometry:
    """How one tile is read: ``read_size`` pixels square at ``level`` covering ``extent`` level-0 pixels,
    resized to ``tile_size``; neighbours are ``step`` level-0 pixels apart; ``mpp`` is the output µm/px;
    ``downsample`` is the read level's downsample (non-integer on real pyramids, e.g. 4.0003)."""

    level: int
    read_size: int
    tile_size: int
    extent: float
    step: float
    mpp: float
    downsample: float = 1.0


def tile_geometry(slide, tile_size: int = 256, mpp: float | None = None, level: int | None = None,
                  overlap: int = 0) -> TileGeometry:
    """Resolve (tile_size, mpp, level, overlap) against ``slide``'s levels; validates every value."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or not 1 <= tile_size <= MAX_TILE_SIZE:
        raise InvalidParameterError(f"{slide.path}: tile_size must be an integer in 1..{MAX_TILE_SIZE}, got {tile_size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < tile_size:
        raise InvalidParameterError(f"{slide.path}: overlap must be an integer in 0..{tile_size - 1}, got {overlap!r}")
    if level is not None:
        slide._check_level(level)
    base = slide.mpp[0] if slide.mpp else None
    if mpp is not None:
        if not (isinstance(mpp, (int, float, np.floating)) and mpp > 0 and math.isfinite(mpp)):
            raise InvalidParameterError(f"{slide.path}: mpp must be a positive µm/px, got {mpp!r}")
        if level is None:
            level, scale = slide.level_for_mpp(float(mpp))
        else:
            scale = float(mpp) / (slide.require_mpp()[0] * slide.level_downsamples[level])
        out_mpp = float(mpp)
    else:
        if level is None:
            if base is None:
                raise MissingMPPError(
                    f"{slide.path}: the slide has no µm/px in its metadata; pass mpp=<target µm/px> with a slide "
                    "override (open_slide(path, mpp=...) or --slide-mpp), or tile by level=<n>")
            level = 0
        scale = 1.0
        out_mpp = base * slide.level_downsamples[level] if base else float("nan")
    if scale * MAX_UPSAMPLE < 1 - 1e-9:
        raise InvalidParameterError(
            f"{slide.path}: target {mpp:.4g} µm/px is {1 / scale:.1f}x finer than the slide's native "
            f"{slide.require_mpp()[0] * slide.level_downsamples[level]:g} µm/px at level {level}; tiles would be "
            f"upsampled more than {MAX_UPSAMPLE:g}x (no new detail). Use a tile µm/px of at least "
            f"{slide.require_mpp()[0] * slide.level_downsamples[level] / MAX_UPSAMPLE:.4g} (mpp ≥ "
            f"{slide.require_mpp()[0] * slide.level_downsamples[level] / MAX_UPSAMPLE:.4g})")
    if scale < 0.99:
        log.warning("%s: target %s µm/px is finer than the slide's native resolution; tiles are upsampled %.2fx",
                    slide.path, mpp, 1 / scale)
    read_size = max(1, int(round(tile_size * scale)))
    if read_size > MAX_TILE_SIZE:
        raise InvalidParameterError(f"{slide.path}: a {tile_size}px tile at {mpp} µm/px needs {read_size}px reads at "
                                    f"level {level} (> {MAX_TILE_SIZE}); use a smaller tile or a coarser mpp")
    extent = read_size * slide.level_downsamples[level]
    W, H = slide.dimensions
    if extent > W or extent > H:
        raise InvalidParameterError(f"{slide.path}: a tile covers {extent:.0f} level-0 px but the slide is only "
                                    f"{W}x{H}; use a smaller tile_size or a finer mpp")
    step = (tile_size - overlap) * extent / tile_size
    return TileGeometry(int(level), read_size, int(tile_size), float(extent), float(step), float(out_mpp),
                        float(slide.level_downsamples[level]))


def _axis_count(size: int, level_size: int | None, geom: TileGeometry) -> int:
    if level_size is None:
        n = int(math.floor((size - geom.extent) / geom.step + 1e-9)) + 1
    else:
        n = int(math.floor((level_size - geom.read_size) / (geom.step / geom.downsample) + 1e-9)) + 1
    return max(n, 0)


def grid_size(dimensions: tuple[int, int], geom: TileGeometry,
              level_dimensions: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(columns, rows)`` of the grid :func:`grid_origins` returns, computed without allocating it."""
    lw, lh = level_dimensions if level_dimensions is not None else (None, None)
    return _axis_count(dimensions[0], lw, geom), _axis_count(dimensions[1], lh, geom)


def _axis_origins(size: int, level_size: int | None, geom: TileGeometry) -> np.ndarray:
    """Level-0 origins along one axis. Tiles sit on whole pixels *of the read level*, and each level-0
    origin is the smallest integer whose ``floor(x / downsample)`` (what ``Slide.read_region`` reads) is
    that level pixel, so a non-integer downsample (4.0003) never shifts a read by one level pixel.
    With ``level_size`` the count is of reads fully inside the level (its downsample is an average of x
    and y, so level-0 arithmetic can miss the last tile by a fraction of a pixel)."""
    ds = geom.downsample
    lstep = geom.step / ds
    n = _axis_count(size, level_size, geom)
    lv = np.floor(np.arange(n) * lstep + 1e-6)
    x = np.ceil(lv * ds - 1e-6)
    x += np.floor(x / ds) < lv  # float round-off: step up to the first level-0 pixel of that level pixel
    return x.astype(np.int64)


def grid_origins(dimensions: tuple[int, int], geom: TileGeometry,
                 level_dimensions: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 (x, y) of every tile fully inside the slide (inside the read level's ``level_dimensions``
    (width, height) when given), row-major (y, then x), as int64 arrays. The remainder at the right and
    bottom border (less than one tile) is not tiled."""
    W, H = dimensions
    lw, lh = level_dimensions if level_dimensions is not None else (None, None)
    xs, ys = _axis_origins(W, lw, geom), _axis_origins(H, lh, geom)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return gx.ravel(), gy.ravel()


def _resolve_mask(slide, mask: Any, mask_downsample: float | None, method_params: dict | None):
    from wsi_lab.tissue import TissueMask, detect_tissue

    if mask is None or isinstance(mask, TissueMask):
        if isinstance(mask, TissueMask) and mask.slide_dimensions != tuple(slide.dimensions):
            raise InvalidParameterError(f"{slide.path}: the mask was made for a {mask.slide_dimensions} slide, "
                                        f"this slide is {slide.dimensions}; detect tissue on this slide")
        return mask
    if isinstance(mask, str):
        return detect_tissue(slide, mask, downsample=mask_downsample, **(method_params or {}))
    raise InvalidParameterError(f"mask must be None, a TissueMask or a method name, got {type(mask).__name__}")


def plan_tiles(slide, tile_size: int = 256, mpp: float | None = None, level: int | None = None, overlap: int = 0,
               mask: Any = None, min_tissue: float = 0.5, two_stage: TwoStage | None = None,
               patient_id: str | None = None, *, slide_mpp: float | None = None,
               mask_downsample: float | None = None, method_params: dict | None = None,
               max_grid_tiles: int | None = None) -> pd.DataFrame:
    """Plan the tiles of ``slide`` (a Slide or path) and return a TileTable (one row per kept tile).

    ``tile_size`` is in output pixels at ``mpp`` µm/px (read from the best level, ``slide.level_for_mpp``)
    or at ``level`` when ``mpp`` is None; ``overlap`` in output pixels. ``mask`` (a TissueMask or a method
    name for :func:`~wsi_lab.detect_tissue`, with ``method_params``) keeps tiles whose tissue fraction
    ≥ ``min_tissue``; None keeps every tile (tissue_fraction NaN). With ``two_stage`` only the coarse pass
    runs here (candidates); :func:`~wsi_lab.tiling.twostage.apply_fine_pass` / ``run_tiling`` do the fine
    pass. ``slide_mpp`` is the µm/px to assume when the metadata has none. x, y are level-0 pixels.
    A grid of more than ``max_grid_tiles`` (default :data:`MAX_GRID_TILES`, ~5 million) tiles is refused
    with :class:`~wsi_lab.errors.InvalidParameterError` before anything is allocated.
    """
    from wsi_lab.data.table import default_patient_id
    from wsi_lab.slide import Slide, open_slide

    if not isinstance(slide, Slide):
        with open_slide(slide, mpp=slide_mpp, mpp_only_if_missing=True) as s:  # opened once: nothing leaks
            return plan_tiles(s, tile_size, mpp, level, overlap, mask, min_tissue, two_stage, patient_id,
                              mask_downsample=mask_downsample, method_params=method_params,
                              max_grid_tiles=max_grid_tiles)
    slide = slide.with_mpp_fallback(slide_mpp)  # a view on the same reader: nothing to close
    if not (isinstance(min_tissue, (int, float)) and 0 <= min_tissue <= 1):
        raise InvalidParameterError(f"{slide.path}: min_tissue must be in [0, 1], got {min_tissue!r}")
    geom = tile_geometry(slide, tile_size, mpp, level, overlap)
    cap = MAX_GRID_TILES if max_grid_tiles is None else int(max_grid_tiles)
    cols, rows = grid_size(slide.dimensions, geom, slide.level_dimensions[geom.level])
    if cols * rows > cap:
        raise InvalidParameterError(
            f"{slide.path}: a {tile_size}px grid at {geom.mpp:g} µm/px (level {geom.level}) has {cols}x{rows} = "
            f"{cols * rows:,} tiles, more than the cap of {cap:,}; use a larger tile_size or a coarser mpp, "
            "or pass max_grid_tiles= to plan it anyway")
    xs, ys = grid_origins(slide.dimensions, geom, slide.level_dimensions[geom.level])
    meta: dict[str, Any] = {
        "slide_path": os.fspath(slide.path), "slide_id": slide.slide_id, "slide_dimensions": list(slide.dimensions),
        "slide_mpp": list(slide.mpp) if slide.mpp else None, "backend": slide.backend,
        "params": {"tile_size": int(tile_size), "mpp": mpp, "level": level, "overlap": int(overlap),
                   "min_tissue": float(min_tissue), "read_level": geom.level, "read_size": geom.read_size},
        "grid_tiles": int(xs.size),
    }
    if two_stage is not None:
        two_stage.validate()
        if two_stage.coarse != tile_size:
            raise InvalidParameterError(f"{slide.path}: two-stage coarse size {two_stage.coarse} must equal tile_size {tile_size}")
        meta["two_stage"] = two_stage.to_dict()
        meta["stage"] = "coarse"
        if two_stage.coarse_source == "mask":
            if not hasattr(mask, "tissue_fraction"):
                cp = dict(two_stage.coarse_params)
                cp.update(threshold_params(two_stage.coarse_method, two_stage.coarse_threshold))
                mask = two_stage.coarse_method
                method_params = cp
            min_keep, strict = two_stage.coarse_min, True
        else:
            mask, min_keep, strict = None, 0.0, False
    else:
        min_keep, strict = float(min_tissue), False
    tm = _resolve_mask(slide, mask, mask_downsample, method_params)
    if tm is not None:
        frac = tm.tissue_fraction(xs, ys, np.full(xs.shape, geom.extent), np.full(xs.shape, geom.extent))
        keep = frac > min_keep if strict else frac >= min_keep - 1e-9
        xs, ys, frac = xs[keep], ys[keep], frac[keep].astype(np.float32)
        meta["mask"] = tm.metadata()
    else:
        frac = np.full(xs.shape, np.nan, np.float32)
    n = xs.size
    pid = patient_id if patient_id is not None else default_patient_id(slide.slide_id)
    table = pd.DataFrame({
        "slide_id": pd.Series([slide.slide_id] * n, dtype=object),
        "patient_id": pd.Series([pid] * n, dtype=object),
        "x": xs, "y": ys,
        "level": np.full(n, geom.level, np.int32), "read_size": np.full(n, geom.read_size, np.int32),
        "tile_size": np.full(n, geom.tile_size, np.int32), "mpp": np.full(n, geom.mpp, np.float64),
        "tissue_fraction": frac,
    })
    table.attrs["wsi_lab"] = meta
    log.info("%s: %d of %d grid tiles planned", slide.slide_id, n, meta["grid_tiles"])
    return table
