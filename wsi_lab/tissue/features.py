"""Per-cell features of a slide on the mask grid, computed once per slide and resolution (cached)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from wsi_lab.io import LRUCache

__all__ = ["default_mask_downsample", "cell_features", "clear_feature_cache"]

#: target mask resolution (µm per mask pixel) and the largest mask side chosen automatically
TARGET_MASK_MPP = 8.0
MAX_MASK_SIDE = 2048
MIN_MASK_DOWNSAMPLE, MIN_MASK_DOWNSAMPLE_NO_MPP = 2.0, 4.0


@dataclass
class _Features:
    downsample: float
    k: int
    shape: tuple[int, int]
    sat: np.ndarray        # mean saturation 0..255
    bright: np.ndarray     # mean of the brightest channel 0..255
    gray: np.ndarray       # mean intensity 0..255
    var: np.ndarray        # variance over all channels of the cell's sub-pixels
    minc: np.ndarray       # (H*k, W*k) darkest channel of each sub-pixel (near-white test)
    maxc: np.ndarray       # (H*k, W*k) brightest channel of each sub-pixel (near-black test)
    border_gray: float
    rgb: np.ndarray | None = None  # (H, W, C) mean of each channel (background colour and optical density)


_CACHE_SIZE = 4
_CACHE: LRUCache[tuple, _Features] = LRUCache(max_items=_CACHE_SIZE)


def default_mask_downsample(slide) -> float:
    """Automatic mask resolution: about 8 µm per mask pixel, coarser when needed to keep the longest
    side ≤ 2048 mask pixels; without µm/px only the side limit applies. At least 2 level-0 pixels per
    mask pixel (4 without µm/px), so every cell has real sub-pixels for its variance/texture features."""
    w, h = slide.dimensions
    ds = max(w, h) / MAX_MASK_SIDE
    if slide.mpp:
        ds = max(ds, TARGET_MASK_MPP / slide.mpp[0])
    return float(max(ds, MIN_MASK_DOWNSAMPLE if slide.mpp else MIN_MASK_DOWNSAMPLE_NO_MPP))


def _compute_features(slide, ds: float) -> _Features:
    from PIL import Image

    W, H = slide.dimensions
    mw, mh = max(1, math.ceil(W / ds)), max(1, math.ceil(H / ds))
    # read the coarsest level with ≥ 2 pixels per cell side; up to 4×4 sub-pixels per cell where that level has them
    level = slide.get_best_level_for_downsample(max(ds / 2, 1.0))
    lds = slide.level_downsamples[level]
    k = int(min(4 if mw * mh <= 1_000_000 else 2, max(2, round(ds / lds))))
    lw, lh = slide.level_dimensions[level]
    rows = max(1, int(16_000_000 // max(1, lw * 3) * lds / ds))  # mask rows per band (≤ ~16 MP of level)
    feats = {n: np.empty((mh, mw), np.float32) for n in ("sat", "bright", "gray", "var")}
    rgb = np.empty((mh, mw, 3), np.float32)
    minc = np.empty((mh * k, mw * k), np.uint8)
    maxc = np.empty((mh * k, mw * k), np.uint8)
    sub_w = max(1, min(mw * k, round(W * k / ds)))
    for r0 in range(0, mh, rows):
        r1 = min(mh, r0 + rows)
        y0, y1 = r0 * ds, min(H, r1 * ds)
        ly0, ly1 = int(math.floor(y0 / lds)), min(lh, int(math.ceil(y1 / lds)))
        band = slide.read_region((0, int(round(ly0 * lds))), level, (lw, max(1, ly1 - ly0)))
        sub_h = max(1, min((r1 - r0) * k, round((y1 - y0) * k / ds)))
        sub = np.asarray(Image.fromarray(band).resize((sub_w, sub_h), Image.Resampling.BOX))
        if sub.shape[:2] != ((r1 - r0) * k, mw * k):  # replicate edge pixels into the partial last cells
            sub = np.pad(sub, ((0, (r1 - r0) * k - sub_h), (0, mw * k - sub_w), (0, 0)), mode="edge")
        mx, mn = sub.max(axis=2), sub.min(axis=2)
        minc[r0 * k:r1 * k], maxc[r0 * k:r1 * k] = mn, mx
        cells = sub.reshape(r1 - r0, k, mw, k, 3).transpose(0, 2, 1, 3, 4).reshape(r1 - r0, mw, k * k * 3)
        cf = cells.astype(np.float32)
        mean = cf.mean(axis=2)
        rgb[r0:r1] = sub.reshape(r1 - r0, k, mw, k, 3).mean(axis=(1, 3), dtype=np.float32)
        feats["gray"][r0:r1] = mean
        feats["var"][r0:r1] = (cf * cf).mean(axis=2) - mean * mean
        s = np.where(mx > 0, (mx.astype(np.float32) - mn) * 255.0 / np.maximum(mx, 1), 0.0)
        feats["sat"][r0:r1] = s.reshape(r1 - r0, k, mw, k).mean(axis=(1, 3))
        feats["bright"][r0:r1] = mx.reshape(r1 - r0, k, mw, k).mean(axis=(1, 3), dtype=np.float32)
    g = feats["gray"]
    m = max(1, min(mh, mw) // 20)
    frame = np.concatenate([g[:m].ravel(), g[-m:].ravel(), g[:, :m].ravel(), g[:, -m:].ravel()])
    return _Features(ds, k, (mh, mw), feats["sat"], feats["bright"], g, np.maximum(feats["var"], 0), minc, maxc,
                     float(np.median(frame)), rgb)


def cell_features(slide, ds: float) -> _Features:
    """The feature grid of ``slide`` at mask downsample ``ds``, computed once per file version (an LRU of
    the last few; the two-stage pass and benchmarks use it too)."""
    try:
        st = os.stat(slide.path)
        key = (str(slide.path), st.st_mtime_ns, st.st_size, slide.backend, round(ds, 6))
    except (OSError, TypeError, AttributeError):
        key = None
    if key is None:
        return _compute_features(slide, ds)
    return _CACHE.get_or_load(key, lambda: _compute_features(slide, ds))


def clear_feature_cache() -> None:
    """Forget every cached feature grid (benchmarks measure cold runs with it)."""
    _CACHE.clear()
