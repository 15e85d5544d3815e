"""Tissue detection on a low-resolution view of a slide, mapped exactly to level-0 pixels.

:func:`detect_tissue` reads a low-resolution level in horizontal bands (memory stays bounded), resamples
each band so that every mask pixel covers exactly ``downsample`` × ``downsample`` level-0 pixels made of
``k × k`` sub-pixels, and computes per-cell features once (cached per slide): mean saturation, mean
intensity, brightest channel, variance over all channels, and the near-white / near-black sub-pixels.
Methods then only threshold these features, so re-thresholding (a UI slider) takes milliseconds:

* ``variance``: per-cell variance of the intensities of all channels > ``threshold`` (the classic method;
  works for brightfield, IHC and fluorescence since background is flat in every modality);
* ``otsu``: Otsu threshold on saturation (brightfield/H&E/IHC; capped at 40 so a slide that is all tissue stays whole;
  on darkness when a brightfield slide has no colour, e.g. a grayscale scan) or on the brightest channel in the log domain
  (fluorescence, dark background); ``threshold=`` forces a value;
* ``background``: a cell is tissue when at most ``max_background`` of it is near-white (brightfield, all
  channels ≥ ``background_threshold``) or near-black (fluorescence, all channels ≤ ``background_threshold``).

Brightfield vs fluorescence is detected from the brightness of the slide's border (``modality="auto"``)
and can be forced. Optional clean-up for every method: ``closing``/``opening`` (radius in mask pixels),
``min_object_um2``/``min_hole_um2`` (µm², needs µm/px) or ``min_object_px``/``min_hole_px`` (level-0 px²).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError, MissingMPPError, NoTissueError

log = logging.getLogger(__name__)

__all__ = ["TissueMask", "detect_tissue", "METHODS", "TISSUE_METHODS", "TissueMethod", "threshold_params",
           "default_background_threshold", "default_mask_downsample"]


@dataclass(frozen=True)
class TissueMethod:
    """One tissue method: the keyword of its main threshold, that threshold's default (None: automatic),
    its valid and its usual range (the UI slider), and the method's other parameters with their defaults."""

    threshold_param: str
    default_threshold: float | None
    valid_max: float
    slider_max: float
    slider_step: float
    help: str
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def defaults(self) -> dict[str, Any]:
        """Every method-specific parameter with its default."""
        return {self.threshold_param: self.default_threshold, **dict(self.extra)}

    def slider(self) -> dict[str, Any]:
        """The threshold slider a UI shows: ``param``, ``min``, ``max``, ``step``, ``default``, ``help``."""
        return {"param": self.threshold_param, "min": 0.0, "max": self.slider_max, "step": self.slider_step,
                "default": self.default_threshold, "help": self.help}


#: THE table of tissue methods (names, threshold keywords, defaults); the CLI, tiling and the tuner read it
TISSUE_METHODS: dict[str, TissueMethod] = {
    "otsu": TissueMethod("threshold", None, 255.0, 255.0, 1.0,
                         "saturation (brightfield) or brightness (fluorescence) cut"),
    "variance": TissueMethod("threshold", 120.0, 255.0 * 255.0, 2000.0, 5.0, "per-cell intensity variance cut"),
    "background": TissueMethod("background_threshold", None, 255.0, 255.0, 1.0,
                               "near-white (brightfield) / near-black (fluorescence) intensity cut",
                               extra=(("max_background", 0.5),)),
}
METHODS = tuple(TISSUE_METHODS)
#: automatic near-white (brightfield) / near-black (fluorescence) intensity of ``background``
BACKGROUND_THRESHOLD = {"brightfield": 220, "fluorescence": 25}
#: target mask resolution (µm per mask pixel) and the largest mask side chosen automatically
TARGET_MASK_MPP = 8.0
MAX_MASK_SIDE = 2048
MIN_MASK_DOWNSAMPLE, MIN_MASK_DOWNSAMPLE_NO_MPP = 2.0, 4.0
#: a brightfield slide whose cells never exceed this mean saturation has no colour (grayscale scan)
GRAY_MAX_SATURATION = 8.0
#: cap of the automatic Otsu cut on saturation (glass is < ~15, stained tissue > ~40)
OTSU_MAX_SATURATION = 40.0
DEFAULTS: dict[str, dict[str, Any]] = {name: m.defaults for name, m in TISSUE_METHODS.items()}
COMMON = {"modality": "auto", "closing": 0, "opening": 0, "min_object_um2": None, "min_hole_um2": None,
          "min_object_px": None, "min_hole_px": None}


def threshold_params(method: str | None, threshold: float | None) -> dict[str, float]:
    """``{keyword: threshold}`` for :func:`detect_tissue`: a single threshold value under the keyword the
    method takes (``threshold`` or ``background_threshold``); empty when either is None."""
    if method is None or threshold is None:
        return {}
    if method not in TISSUE_METHODS:
        raise InvalidParameterError(f"unknown tissue method {method!r}; choose one of {', '.join(METHODS)}")
    return {TISSUE_METHODS[method].threshold_param: threshold}


def default_background_threshold(modality: str) -> float:
    """The automatic near-white (brightfield) / near-black (fluorescence) intensity cut."""
    return float(BACKGROUND_THRESHOLD["fluorescence" if modality == "fluorescence" else "brightfield"])


# ----------------------------------------------------------------------------------------------
# the mask
# ----------------------------------------------------------------------------------------------
@dataclass
class TissueMask:
    """A boolean (H, W) tissue mask: mask pixel (i, j) covers level-0 pixels
    ``[j*downsample, (j+1)*downsample) × [i*downsample, (i+1)*downsample)`` (x, y)."""

    mask: np.ndarray
    downsample: float
    method: str = "custom"
    params: dict = field(default_factory=dict)
    slide_path: str | None = None
    slide_dimensions: tuple[int, int] | None = None  # level-0 (width, height)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 2:
            raise InvalidParameterError(f"a TissueMask must be 2-D (H, W), got shape {self.mask.shape}")
        if not (self.downsample > 0 and math.isfinite(self.downsample)):
            raise InvalidParameterError(f"TissueMask downsample must be positive, got {self.downsample!r}")
        if self.slide_dimensions is None:
            h, w = self.mask.shape
            self.slide_dimensions = (int(round(w * self.downsample)), int(round(h * self.downsample)))
        w0, h0 = self.slide_dimensions
        self.slide_dimensions = (int(w0), int(h0))

    @property
    def _dims(self) -> tuple[int, int]:
        assert self.slide_dimensions is not None  # always set by __post_init__
        return self.slide_dimensions

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def fraction(self) -> float:
        """Fraction of the slide area that is tissue (0..1)."""
        w, h = self._dims
        return float(self.tissue_fraction(0, 0, w, h))

    def __array__(self, dtype=None, copy=None):
        return self.mask if dtype is None else self.mask.astype(dtype)

    @cached_property
    def _integral(self) -> np.ndarray:
        s = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.float64)
        np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.int64), axis=1, out=s[1:, 1:])
        return s

    def _area_to(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Tissue area (mask px²) of [0, u) × [0, v): bilinear interpolation of the integral image,
        which is exact for a piecewise-constant mask."""
        s = self._integral
        h, w = self.mask.shape
        u = np.clip(u, 0, w)
        v = np.clip(v, 0, h)
        j = np.minimum(np.floor(u).astype(np.int64), w - 1)
        i = np.minimum(np.floor(v).astype(np.int64), h - 1)
        fu, fv = u - j, v - i
        a, b, c, d = s[i, j], s[i, j + 1], s[i + 1, j], s[i + 1, j + 1]
        return a + fu * (b - a) + fv * (c - a) + fu * fv * (a - b - c + d)

    def tissue_fraction(self, x, y, w, h):
        """Fraction (0..1) of the level-0 box(es) ``(x, y, w, h)`` covered by tissue; scalars give a float,
        arrays give an array (vectorised over the integral image: ~10 M boxes/s). Parts of a box outside the
        slide count as background."""
        x, y, w, h = (np.asarray(a, dtype=np.float64) for a in (x, y, w, h))
        if np.any(w <= 0) or np.any(h <= 0):
            raise InvalidParameterError("tissue_fraction: box width and height must be positive")
        ds = self.downsample
        u0, v0, u1, v1 = x / ds, y / ds, (x + w) / ds, (y + h) / ds
        area = (self._area_to(u1, v1) - self._area_to(u0, v1) - self._area_to(u1, v0) + self._area_to(u0, v0))
        frac = np.clip(area / ((u1 - u0) * (v1 - v0)), 0.0, 1.0)
        return float(frac) if frac.ndim == 0 else frac

    def to_rgba(self, color: tuple[int, int, int] | str = (0, 200, 0), alpha: float = 0.4) -> np.ndarray:
        """(H, W, 4) uint8 overlay: ``color`` where tissue, transparent elsewhere."""
        from PIL import ImageColor

        rgb = ImageColor.getrgb(color)[:3] if isinstance(color, str) else tuple(int(c) for c in color[:3])
        if not 0 <= alpha <= 1:
            raise InvalidParameterError(f"alpha must be in [0, 1], got {alpha!r}")
        out = np.zeros(self.mask.shape + (4,), np.uint8)
        out[self.mask] = (*rgb, int(round(alpha * 255)))
        return out

    def metadata(self) -> dict:
        return {"downsample": self.downsample, "method": self.method, "params": self.params,
                "slide_path": self.slide_path, "slide_dimensions": list(self._dims)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the mask as a 1-bit PNG (atomically) with its metadata in a ``wsi_lab`` text chunk."""
        from PIL import Image, PngImagePlugin

        from wsi_lab.io import atomic_path

        target = Path(path)
        if target.suffix.lower() != ".png":
            raise InvalidParameterError(f"{target}: a TissueMask is saved as .png")
        info = PngImagePlugin.PngInfo()
        info.add_text("wsi_lab", json.dumps(self.metadata(), default=str))
        with atomic_path(target) as tmp:
            Image.fromarray(self.mask).save(tmp, format="PNG", pnginfo=info)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> TissueMask:
        """Read a mask written by :meth:`save`."""
        from PIL import Image

        with Image.open(path) as img:
            meta = json.loads(img.text.get("wsi_lab", "{}")) if hasattr(img, "text") else {}
            arr = np.asarray(img.convert("L")) > 0
        if "downsample" not in meta:
            raise InvalidParameterError(f"{path}: not a TissueMask PNG (no wsi_lab metadata); save masks with TissueMask.save")
        return cls(arr, float(meta["downsample"]), meta.get("method", "custom"), meta.get("params", {}),
                   meta.get("slide_path"), tuple(meta["slide_dimensions"]) if meta.get("slide_dimensions") else None)

    def __repr__(self) -> str:
        return (f"<TissueMask {self.mask.shape[1]}x{self.mask.shape[0]} downsample={self.downsample:.4g} "
                f"method={self.method} tissue={self.fraction:.1%}>")


# ----------------------------------------------------------------------------------------------
# features on a low-resolution grid (cached)
# ----------------------------------------------------------------------------------------------
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


_CACHE: OrderedDict[tuple, _Features] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


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
        feats["gray"][r0:r1] = mean
        feats["var"][r0:r1] = (cf * cf).mean(axis=2) - mean * mean
        s = np.where(mx > 0, (mx.astype(np.float32) - mn) * 255.0 / np.maximum(mx, 1), 0.0)
        feats["sat"][r0:r1] = s.reshape(r1 - r0, k, mw, k).mean(axis=(1, 3))
        feats["bright"][r0:r1] = mx.reshape(r1 - r0, k, mw, k).mean(axis=(1, 3), dtype=np.float32)
    g = feats["gray"]
    m = max(1, min(mh, mw) // 20)
    frame = np.concatenate([g[:m].ravel(), g[-m:].ravel(), g[:, :m].ravel(), g[:, -m:].ravel()])
    return _Features(ds, k, (mh, mw), feats["sat"], feats["bright"], g, np.maximum(feats["var"], 0), minc, maxc,
                     float(np.median(frame)))


def _features(slide, ds: float) -> _Features:
    try:
        st = os.stat(slide.path)
        key = (str(slide.path), st.st_mtime_ns, st.st_size, slide.backend, round(ds, 6))
    except (OSError, TypeError, AttributeError):
        key = None
    if key is not None:
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
    f = _compute_features(slide, ds)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = f
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return f


# ----------------------------------------------------------------------------------------------
# thresholds and clean-up
# ----------------------------------------------------------------------------------------------
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


def _check_params(method: str, params: dict) -> dict:
    if method not in METHODS:
        raise InvalidParameterError(f"unknown tissue method {method!r}; choose one of {', '.join(METHODS)}")
    allowed = {**COMMON, **DEFAULTS[method]}
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidParameterError(f"tissue method {method!r} does not take {unknown}; it accepts {sorted(allowed)}")
    p = {**allowed, **{k: v for k, v in params.items() if v is not None or k in DEFAULTS[method]}}
    if p["modality"] not in ("auto", "brightfield", "fluorescence"):
        raise InvalidParameterError(f"modality must be 'auto', 'brightfield' or 'fluorescence', got {p['modality']!r}")

    def num(name, lo, hi):
        v = p.get(name)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not (lo <= float(v) <= hi):
            raise InvalidParameterError(f"tissue {method}: {name}={v!r} is out of range; expected a number in [{lo}, {hi}]")

    spec = TISSUE_METHODS[method]
    num(spec.threshold_param, 0, spec.valid_max)
    num("max_background", 0, 1)
    for n in ("closing", "opening"):
        num(n, 0, 64)
    for n in ("min_object_um2", "min_hole_um2", "min_object_px", "min_hole_px"):
        num(n, 0, 1e15)
    return p


def detect_tissue(slide, method: str = "otsu", *, downsample: float | None = None, **params: Any) -> TissueMask:
    """Find tissue on a low-resolution view of ``slide`` (a :class:`~wsi_lab.Slide` or a path).

    ``downsample`` is level-0 pixels per mask pixel (default :func:`default_mask_downsample`, ~8 µm/px).
    Method parameters are described in the module docstring. Raises :class:`NoTissueError` (naming the
    slide, method and threshold) when nothing is found and :class:`InvalidParameterError` for bad values.
    """
    from wsi_lab.slide import Slide, open_slide

    if not isinstance(slide, Slide):
        with open_slide(slide) as s:
            return detect_tissue(s, method, downsample=downsample, **params)
    p = _check_params(method, params)
    ds = default_mask_downsample(slide) if downsample is None else float(downsample)
    W, H = slide.dimensions
    if not (ds > 0 and math.isfinite(ds)) or math.ceil(W / ds) * math.ceil(H / ds) > 2**26:
        raise InvalidParameterError(f"{slide.path}: mask downsample={downsample!r} is not usable; "
                                    f"give a positive value ≥ {math.sqrt(W * H / 2**26):.1f} (or None for automatic)")
    f = _features(slide, ds)
    if p["modality"] == "auto":
        p["modality"] = "fluorescence" if f.border_gray < 100 else "brightfield"
    fluo = p["modality"] == "fluorescence"
    if method == "variance":
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
        raise NoTissueError(f"{slide.path}: no tissue found with method={method!r} {thr} ({p['modality']}); "
                            "lower the threshold or try another method")
    log.info("%s: %s tissue %.1f%% (mask %dx%d, downsample %.3g)", slide.path, method, 100 * mask.mean(),
             mask.shape[1], mask.shape[0], ds)
    return TissueMask(mask, ds, method, p, str(slide.path), slide.dimensions)
