"""The ``od`` tissue feature: optical density against the slide's own background colour.

Brightfield: the background (glass) colour is the most common colour of the bright, unsaturated cells
of the slide; each cell's density is the norm of its per-channel optical density
``log10((glass + 1) / (cell + 1))`` (channels brighter than the glass count 0). Any stain makes it
positive: eosin and haematoxylin, a pale blue counterstain, brown DAB, a grey frozen section. Fluorescence
(dark background): the same with the log *brightness* above the darkest common colour.

The automatic threshold is Otsu's on ``log10(density + 0.005)`` (a dense DAB nucleus does not pull the
cut up into the tissue), kept within [:data:`OD_MIN_THRESHOLD`, :data:`OD_MAX_THRESHOLD`] (a slide that
is all tissue stays whole; glass noise never passes).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["background_colour", "density", "auto_od_threshold", "OD_MIN_THRESHOLD", "OD_MAX_THRESHOLD",
           "OD_FALLBACK_GLASS"]

#: bounds of the automatic cut on optical density (OD units; glass noise is < 0.01 on cell means,
#: a 20%-strength haematoxylin counterstain is ~0.05-0.1)
OD_MIN_THRESHOLD, OD_MAX_THRESHOLD = 0.012, 0.05
#: fluorescence bounds (log10 brightness ratio above background: 0.05 = 12% brighter)
FLUO_MIN_THRESHOLD, FLUO_MAX_THRESHOLD = 0.03, 0.5
#: glass colour assumed when no cell looks like glass (a slide that is all tissue)
OD_FALLBACK_GLASS = (245.0, 245.0, 245.0)
_EPS = 0.005


def background_colour(rgb: np.ndarray, gray: np.ndarray, sat: np.ndarray, var: np.ndarray,
                      fluorescence: bool) -> tuple[np.ndarray, float]:
    """``(colour (C,), share of cells that look like it)``: the mode of the gray level among flat (glass
    has no texture: variance within 4x the flattest cells'), bright, unsaturated cells that are not
    scanner padding (pure white) in brightfield, or flat dark cells in fluorescence; the colour is the
    median of the cells within ±4 gray levels of that mode."""
    from scipy import ndimage

    cand = (gray < 100) if fluorescence else ((sat < 30) & (gray > 100) & (gray < 254.5))
    if cand.any():
        flat = cand & (var <= max(4.0 * float(np.quantile(var[cand], 0.05)), 1.0))
        if flat.sum() >= 0.01 * cand.size:
            cand = flat
    if not cand.any():
        return np.asarray((0.0, 0.0, 0.0) if fluorescence else OD_FALLBACK_GLASS, np.float32), 0.0
    hist = np.bincount(np.clip(gray[cand], 0, 255).astype(np.int64), minlength=256).astype(np.float64)
    mode = int(np.argmax(ndimage.gaussian_filter1d(hist, 1.5)))
    sel = cand & (np.abs(gray - mode) <= 4)
    share = float(sel.mean())
    if share < 0.01:  # no real glass (all tissue): assume clean glass
        return np.asarray((0.0, 0.0, 0.0) if fluorescence else OD_FALLBACK_GLASS, np.float32), share
    return np.median(rgb[sel], axis=0).astype(np.float32), share


def density(rgb: np.ndarray, background: np.ndarray, fluorescence: bool) -> np.ndarray:
    """(H, W) float32 optical density (brightfield) or log brightness (fluorescence) of each cell against
    ``background``, median-filtered over 3 × 3 cells (drops lone specks, keeps edges)."""
    from scipy import ndimage

    ratio = np.log10((rgb + 1.0) / (background + 1.0))
    od = np.maximum(ratio if fluorescence else -ratio, 0.0)
    d = np.sqrt((od * od).sum(axis=2)).astype(np.float32)
    return ndimage.median_filter(d, size=3, mode="nearest") if min(d.shape) >= 3 else d


def auto_od_threshold(values: np.ndarray, fluorescence: bool) -> float:
    """Otsu's cut on ``log10(values + 0.005)``, clipped to the method's bounds."""
    from wsi_lab.tissue.detect import otsu_threshold

    lo, hi = math.log10(_EPS), math.log10(3.0 + _EPS)
    t = otsu_threshold(np.log10(np.minimum(values, 3.0) + _EPS), value_range=(lo, hi))
    t = 10.0 ** t - _EPS if math.isfinite(t) else OD_MIN_THRESHOLD
    tmin, tmax = (FLUO_MIN_THRESHOLD, FLUO_MAX_THRESHOLD) if fluorescence else (OD_MIN_THRESHOLD, OD_MAX_THRESHOLD)
    return float(min(max(t, tmin), tmax))
