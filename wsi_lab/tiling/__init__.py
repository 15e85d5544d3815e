"""Tiling: grid planning (:func:`plan_tiles`), two-stage filtering and Dask execution (:func:`run_tiling`).

``wsi_lab.tiling`` imports Dask only when :func:`run_tiling` is called.
"""

from __future__ import annotations

import importlib
from typing import Any

from wsi_lab.tiling.grid import TileGeometry, plan_tiles, tile_geometry
from wsi_lab.tiling.params import TilingParams, TwoStage
from wsi_lab.tiling.twostage import apply_fine_pass, compare_tile_sets

_LAZY = {"run_tiling": "wsi_lab.tiling.dask_run", "start_tiling": "wsi_lab.tiling.dask_run",
         "TilingJob": "wsi_lab.tiling.dask_run", "TilingResult": "wsi_lab.tiling.outputs",
         "slide_outputs_complete": "wsi_lab.tiling.outputs"}

__all__ = ["plan_tiles", "tile_geometry", "TileGeometry", "TilingParams", "TwoStage", "apply_fine_pass",
           "compare_tile_sets", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wsi_lab.tiling' has no attribute {name!r}")
