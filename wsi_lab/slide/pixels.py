"""Pixel conversions shared by the reader backends: every backend returns (H, W, 3) uint8 RGB, with
transparent areas composited onto white (the colour of glass)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(path: Path) -> bool:
    """True when the file starts with a classic or BigTIFF header."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def ycbcr_to_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 full-range (JFIF) YCbCr -> RGB."""
    a = arr.astype(np.float32)
    y, cb, cr = a[..., 0], a[..., 1] - 128.0, a[..., 2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def to_rgb(arr: np.ndarray, display_max: np.ndarray | float | None = None) -> np.ndarray:
    """Any (H, W), (H, W, 1), (H, W, 2), (H, W, 3), (H, W, 4) or (H, W, C>4) image -> (H, W, 3) uint8 RGB.

    Non-uint8 pixels are scaled so that ``display_max`` (per channel, or one value) maps to 255: pass the
    slide's fixed value so every read is scaled alike; without it this array's own 99.9th percentile is used."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8:
        a = arr.astype(np.float32)
        if display_max is None:
            display_max = float(np.percentile(a, 99.9)) if a.size else 1.0
        hi = np.asarray(display_max, np.float32).reshape(-1)
        hi = hi[: a.shape[2]] if hi.size >= a.shape[2] else np.full(a.shape[2], hi.max(), np.float32)
        arr = np.clip(a * (255.0 / np.maximum(hi, 1e-12)), 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 2:  # two channels: red and green
        return np.dstack([arr, np.zeros(arr.shape[:2], np.uint8)])
    if arr.shape[2] == 4:
        if arr[:, :, 3].min() == 255:  # fully opaque (the usual case): no compositing needed
            return np.ascontiguousarray(arr[:, :, :3])
        rgb = arr[:, :, :3].astype(np.uint16)
        alpha = arr[:, :, 3:4].astype(np.uint16)
        return ((rgb * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)
    if arr.shape[2] > 4:
        return np.ascontiguousarray(arr[:, :, :3])
    return np.ascontiguousarray(arr)
