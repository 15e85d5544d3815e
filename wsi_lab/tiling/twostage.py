"""The fine pass of two-stage filtering (reads pixels) and comparison of kept tile sets.

A candidate tile is read at its output resolution, cut into ``fine`` × ``fine`` sub-tiles, and each
sub-tile is scored; the tile is kept when the fraction of passing sub-tiles ≥ ``min_fine_fraction``.
With ``coarse_source="pixels"`` the coarse statistic of the whole tile is computed from the same read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from wsi_lab.data.tile_reader import read_tile
from wsi_lab.errors import InvalidParameterError
from wsi_lab.tiling.params import TwoStage
from wsi_lab.tissue import default_background_threshold

log = logging.getLogger(__name__)

__all__ = ["subtile_scores", "fine_pass", "apply_fine_pass", "compare_tile_sets", "default_threshold"]

_DEFAULTS = {"variance": 120.0, "saturation": 25.0, "brightness": 40.0}


def default_threshold(method: str, modality: str) -> float:
    """Default cut of a fine/coarse pixel statistic (intensity 0..255, variance in intensity²)."""
    if method == "background":
        return default_background_threshold(modality)
    return _DEFAULTS[method]


def subtile_scores(tile: np.ndarray, fine: int, method: str, threshold: float, modality: str) -> np.ndarray:
    """Boolean (n, n) array: which ``fine``² sub-tiles of a square (T, T, 3) tile pass ``method``."""
    t = tile.shape[0]
    n = t // fine
    if n < 1:
        raise InvalidParameterError(f"fine size {fine} is larger than the tile ({t})")
    blocks = tile[:n * fine, :n * fine].reshape(n, fine, n, fine, 3).transpose(0, 2, 1, 3, 4)
    if method == "variance":
        b = blocks.reshape(n, n, -1).astype(np.float32)
        return b.var(axis=2) > threshold
    mx, mn = blocks.max(axis=4), blocks.min(axis=4)
    if method == "background":
        bg = (mx <= threshold) if modality == "fluorescence" else (mn >= threshold)
        return bg.mean(axis=(2, 3)) <= 0.5
    if method == "saturation":
        sat = np.where(mx > 0, (mx.astype(np.float32) - mn) * 255.0 / np.maximum(mx, 1), 0.0)
        return sat.mean(axis=(2, 3)) > threshold
    if method == "brightness":
        return mx.mean(axis=(2, 3), dtype=np.float32) > threshold
    raise InvalidParameterError(f"unknown fine method {method!r}")


def fine_pass(tile: np.ndarray, ts: TwoStage, min_fraction: float, modality: str) -> tuple[bool, float]:
    """Run the two-stage test on one tile: ``(keep, fraction of fine sub-tiles passing)``; with
    ``coarse_source="pixels"`` a tile failing the coarse statistic is dropped with fraction 0."""
    if ts.coarse_source == "pixels":
        ct = ts.coarse_threshold if ts.coarse_threshold is not None else default_threshold(ts.coarse_method, modality)
        if not subtile_scores(tile, tile.shape[0], ts.coarse_method, ct, modality)[0, 0]:
            return False, 0.0
    ft = ts.fine_threshold if ts.fine_threshold is not None else default_threshold(ts.fine_method, modality)
    frac = float(subtile_scores(tile, ts.fine, ts.fine_method, ft, modality).mean())
    return frac >= min_fraction - 1e-9, frac


def resolve_modality(slide, table: pd.DataFrame, ts: TwoStage) -> str:
    """The two-stage modality: explicit, else the coarse mask's, else from the slide's border brightness."""
    if ts.modality != "auto":
        return ts.modality
    m = ((table.attrs.get("wsi_lab") or {}).get("mask") or {}).get("params", {}).get("modality")
    if m in ("brightfield", "fluorescence"):
        return m
    from wsi_lab.tissue import cell_features, default_mask_downsample

    return "fluorescence" if cell_features(slide, default_mask_downsample(slide)).border_gray < 100 else "brightfield"


def apply_fine_pass(slide, table: pd.DataFrame, two_stage: TwoStage | None = None, min_tissue: float | None = None,
                    modality: str | None = None,
                    on_tile: Callable[[pd.Series, np.ndarray], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Read every tile of ``table`` (rows of one slide) and keep those passing the fine pass;
    ``tissue_fraction`` becomes the fraction of passing sub-tiles. ``two_stage``/``min_tissue`` default
    to the ones recorded in ``table.attrs``. ``on_tile(row, tile)`` is called for each kept tile (used to
    write JPEGs). Runs in-process; :func:`~wsi_lab.run_tiling` runs it per region chunk on Dask."""
    meta = table.attrs.get("wsi_lab") or {}
    if two_stage is None:
        if not meta.get("two_stage"):
            raise InvalidParameterError("apply_fine_pass needs two_stage= (the table records none)")
        two_stage = TwoStage(**meta["two_stage"])
    two_stage.validate()
    if min_tissue is None:
        min_tissue = two_stage.min_fine_fraction
    if min_tissue is None:
        min_tissue = float((meta.get("params") or {}).get("min_tissue", 0.5))
    modality = modality or resolve_modality(slide, table, two_stage)
    keep = np.zeros(len(table), bool)
    frac = np.zeros(len(table), np.float32)
    cols = [table[c].to_numpy() for c in ("x", "y", "level", "read_size", "tile_size")]
    for i in range(len(table)):
        if should_stop is not None and should_stop():
            break
        x, y, lv, rs, ts = (int(c[i]) for c in cols)
        tile = read_tile(slide, x, y, lv, rs, ts)
        keep[i], frac[i] = fine_pass(tile, two_stage, float(min_tissue), modality)
        if keep[i] and on_tile is not None:
            on_tile(table.iloc[i], tile)
    out = table.loc[keep].copy()
    out["tissue_fraction"] = frac[keep]
    out.attrs = {"wsi_lab": {**meta, "stage": "fine", "fine_modality": modality}}
    return out.reset_index(drop=True)


def compare_tile_sets(a: pd.DataFrame, b: pd.DataFrame, universe: pd.DataFrame | int | None = None) -> dict:
    """Agreement of two kept tile sets (e.g. mask-based vs two-stage), matched on (slide_id, x, y):
    counts, IoU (Jaccard), Dice, and with ``universe`` (all candidate tiles or their number) the accuracy
    ``(both kept + both dropped) / universe``."""
    key = ["slide_id", "x", "y"]
    ka = set(map(tuple, a[key].itertuples(index=False, name=None)))
    kb = set(map(tuple, b[key].itertuples(index=False, name=None)))
    both, union = len(ka & kb), len(ka | kb)
    out = {"n_a": len(ka), "n_b": len(kb), "both": both, "only_a": len(ka - kb), "only_b": len(kb - ka),
           "iou": both / union if union else 1.0,
           "dice": 2 * both / (len(ka) + len(kb)) if (ka or kb) else 1.0}
    if universe is not None:
        n = universe if isinstance(universe, int) else len(universe)
        out["agreement"] = (n - union + both) / n if n else 1.0
    return out
