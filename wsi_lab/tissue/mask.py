"""``TissueMask``: a boolean tissue mask mapped exactly to level-0 pixels, saved as a 1-bit PNG."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from wsi_lab.errors import InvalidParameterError

__all__ = ["TissueMask"]


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
