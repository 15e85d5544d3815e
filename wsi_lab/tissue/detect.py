"""``detect_tissue``: threshold the cached features with a method of the table, then clean the mask up."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError, MissingMPPError, NoTissueError
from wsi_lab.slide.display import FLUORESCENCE_BORDER_GRAY
from wsi_lab.tissue.density import auto_od_threshold, background_colour, density
from wsi_lab.tissue.features import TARGET_MASK_MPP, cell_features, default_mask_downsample
from wsi_lab.tissue.mask import TissueMask
from wsi_lab.tissue.methods import DEFAULT_METHOD, METHODS, check_params, default_background_threshold

log = logging.getLogger("wsi_lab.tissue")

__all__ = ["detect_tissue", "otsu_threshold"]

#: a brightfield slide whose cells never exceed this mean saturation has no colour (grayscale scan)
GRAY_MAX_SATURATION = 8.0
#: cap of the automatic Otsu cut on saturation (glass is < ~15, stained tissue > ~40)
OTSU_MAX_SATURATION = 40.0


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range: tuple[float, float] = (0.0, 255.0)) -> float:
    """Otsu's threshold of ``values`` (the cut maximising between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=value_range)
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))]) if w0[-1] else float("nan")


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx * xx + yy * yy <= r * r


def _area_cells(params: dict, key: str, slide, ds: float) -> float:
    um2, px = params.get(f"{key}_um2"), params.get(f"{key}_px")
    if um2:
        if not slide.mpp:
            raise MissingMPPError(f"{slide.path}: {key}_um2 needs µm/px; open the slide with mpp=... or use {key}_px")
        px = um2 / (slide.mpp[0] * slide.mpp[1])
    return float(px) / (ds * ds) if px else 0.0


def _clean(mask: np.ndarray, params: dict, slide, ds: float) -> np.ndarray:
    from scipy import ndimage

    for op, name in ((ndimage.binary_closing, "closing"), (ndimage.binary_opening, "opening")):
        r = int(params.get(name) or 0)
        if r > 0:
            padded = np.pad(mask, r, mode="edge")
            mask = op(padded, structure=_disk(r))[r:-r, r:-r]
    min_obj = _area_cells(params, "min_object", slide, ds)
    if min_obj > 0 and mask.any():
        lab, n = ndimage.label(mask)
        sizes = np.bincount(lab.ravel())
        keep = sizes >= min_obj
        keep[0] = False
        mask = keep[lab]
    min_hole = _area_cells(params, "min_hole", slide, ds)
    if min_hole > 0 and not mask.all():
        lab, n = ndimage.label(~mask)
        sizes = np.bincount(lab.ravel())
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        fill = sizes < min_hole
        fill[0] = False
        fill[border] = False
        mask = mask | fill[lab]
    return mask


def _od_mask(f, p: dict, params: dict, slide, ds: float, fluo: bool) -> np.ndarray:
    """The ``od`` method: density against the slide's background colour, cut at ``threshold``."""
    assert f.rgb is not None
    bg, share = background_colour(f.rgb, f.gray, f.sat, f.var, fluo)
    values = density(f.rgb, bg, fluo)
    p["feature"] = "log brightness" if fluo else "optical density"
    p["background_colour"] = [round(float(c), 1) for c in bg]
    if p["threshold"] is None:
        p["threshold"] = round(auto_od_threshold(values, fluo), 4)
        p["auto_threshold"] = True
    if not slide.mpp:  # the method's default areas (µm²) on a slide without µm/px: assume ~8 µm per mask cell
        for key in ("min_object", "min_hole"):
            if f"{key}_um2" not in params and p.get(f"{key}_um2") and not p.get(f"{key}_px"):
                p[f"{key}_px"] = float(p.pop(f"{key}_um2")) * (ds / TARGET_MASK_MPP) ** 2
                p[f"{key}_um2"] = None
    return values > float(p["threshold"])


def detect_tissue(slide, method: str = DEFAULT_METHOD, *, downsample: float | None = None, **params: Any) -> TissueMask:
    """Find tissue on a low-resolution view of ``slide`` (a :class:`~wsi_lab.Slide` or a path).

    ``downsample`` is level-0 pixels per mask pixel (default :func:`default_mask_downsample`, ~8 µm/px).
    Method parameters are described in the module docstring. Raises :class:`NoTissueError` (naming the
    slide, method and threshold) when nothing is found and :class:`InvalidParameterError` for bad values.
    """
    from wsi_lab.slide import Slide, open_slide

    if not isinstance(slide, Slide):
        with open_slide(slide) as s:
            return detect_tissue(s, method, downsample=downsample, **params)
    p = check_params(method, params)
    ds = default_mask_downsample(slide) if downsample is None else float(downsample)
    W, H = slide.dimensions
    if not (ds > 0 and math.isfinite(ds)) or math.ceil(W / ds) * math.ceil(H / ds) > 2**26:
        raise InvalidParameterError(f"{slide.path}: mask downsample={downsample!r} is not usable; "
                                    f"give a positive value ≥ {math.sqrt(W * H / 2**26):.1f} (or None for automatic)")
    f = cell_features(slide, ds)
    if p["modality"] == "auto":
        p["modality"] = "fluorescence" if f.border_gray < FLUORESCENCE_BORDER_GRAY else "brightfield"
    fluo = p["modality"] == "fluorescence"
    if method == "od":
        mask = _od_mask(f, p, params, slide, ds, fluo)
    elif method == "variance":
        mask = f.var > float(p["threshold"])
    elif method == "otsu":
        # fluorescence: brightness; brightfield: saturation, or darkness when the slide has no colour (grayscale)
        gray_bf = not fluo and float(f.sat.max()) < GRAY_MAX_SATURATION
        values = f.bright if fluo else (255.0 - f.gray if gray_bf else f.sat)
        p["feature"] = "brightness" if fluo else ("darkness" if gray_bf else "saturation")
        if p["threshold"] is None:
            # fluorescence intensities are heavy-tailed (a few bright nuclei): Otsu in the log domain
            # separates dark background from dim tissue instead of dim from bright tissue
            t = float(np.expm1(otsu_threshold(np.log1p(values), value_range=(0.0, math.log(256.0))))) if fluo \
                else otsu_threshold(values)
            if not math.isfinite(t) or float(values.max()) - float(values.min()) < 4:
                raise NoTissueError(f"{slide.path}: otsu found no contrast on {p['feature']}"
                                    " (blank slide?); try method='variance' or give threshold=")
            if not fluo and not gray_bf and t > OTSU_MAX_SATURATION:  # e.g. a slide that is all tissue: Otsu splits the tissue
                t = OTSU_MAX_SATURATION
            p["threshold"] = round(t, 3)
            p["auto_threshold"] = True
        mask = values > float(p["threshold"])
    else:
        if p["background_threshold"] is None:
            p["background_threshold"] = int(default_background_threshold(p["modality"]))
        t, k = int(p["background_threshold"]), f.k
        bg = (f.maxc <= t) if fluo else (f.minc >= t)
        frac = bg.reshape(f.shape[0], k, f.shape[1], k).mean(axis=(1, 3))
        mask = frac <= float(p["max_background"])
    mask = _clean(mask, p, slide, ds)
    if not mask.any():
        thr = {k: p[k] for k in ("threshold", "background_threshold", "max_background") if k in p}
        main = p.get("threshold", p.get("background_threshold"))
        how = " (automatic)" if p.get("auto_threshold") else ""
        raise NoTissueError(f"{slide.path}: no tissue found with method={method!r} {thr}{how} ({p['modality']}); "
                            f"lower the threshold (threshold=, --threshold) or try another method "
                            f"({', '.join(m for m in METHODS if m != method)})", method, main)
    log.info("%s: %s tissue %.1f%% (mask %dx%d, downsample %.3g)", slide.path, method, 100 * mask.mean(),
             mask.shape[1], mask.shape[0], ds)
    return TissueMask(mask, ds, method, p, str(slide.path), slide.dimensions)
