"""Display settings: how pixels are shown to a person (contrast limits, gamma, channel colours).

The one rule for every display path (thumbnails, the slide browser, deep-zoom tiles, napari, overlay
backgrounds): a brightfield slide is shown as scanned; a fluorescence slide (dark background) gets, per
channel that carries signal, contrast limits from the slide's own statistics (the 0.5th and 99.5th
percentiles of a low-resolution view) and a gamma. Analysis never sees this: ``read_region`` and
``get_thumbnail()`` without ``display=`` return the raw pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError
from wsi_lab.io import LRUCache

__all__ = ["DisplaySettings", "auto_display", "apply_display", "resolve_display", "is_dark_background",
           "settings_from_pixels",
           "FLUORESCENCE_BORDER_GRAY", "DEFAULT_PERCENTILES", "CHANNEL_COLORS"]

#: a slide whose border (median gray of the outer 5%) is darker than this is fluorescence
FLUORESCENCE_BORDER_GRAY = 100.0
#: contrast-limit percentiles taken from the slide's low-resolution view
DEFAULT_PERCENTILES = (0.5, 99.5)
#: display colour of channel i of an RGB read (red, green, blue); further channels cycle
CHANNEL_COLORS: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255),
                                                    (0, 255, 255), (255, 255, 0))
#: a channel whose upper limit is below this share of the brightest channel's carries no signal
SIGNAL_SHARE = 0.2


@dataclass(frozen=True)
class DisplaySettings:
    """Which ``channels`` to show, the RGB colour of each, its (low, high) contrast ``limits`` in pixel
    values and a ``gamma`` (shown value = ((v - low) / (high - low)) ** gamma). ``identity`` settings
    (brightfield) leave RGB pixels as they are."""

    channels: tuple[int, ...] = (0, 1, 2)
    colors: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    limits: tuple[tuple[float, float], ...] = ((0.0, 255.0), (0.0, 255.0), (0.0, 255.0))
    gamma: float = 1.0
    modality: str = "brightfield"
    source: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not (len(self.channels) == len(self.colors) == len(self.limits)) or not self.channels:
            raise InvalidParameterError("DisplaySettings: channels, colors and limits need one entry per channel")
        if not (isinstance(self.gamma, (int, float)) and 0.05 <= float(self.gamma) <= 20):
            raise InvalidParameterError(f"DisplaySettings: gamma must be in [0.05, 20], got {self.gamma!r}")
        for lo, hi in self.limits:
            if not hi > lo:
                raise InvalidParameterError(f"DisplaySettings: contrast limits need high > low, got {(lo, hi)}")

    @property
    def identity(self) -> bool:
        """True when applying the settings to an RGB uint8 image returns it unchanged."""
        return (self.channels == (0, 1, 2) and self.colors == CHANNEL_COLORS[:3] and self.gamma == 1.0
                and all(tuple(map(float, lim)) == (0.0, 255.0) for lim in self.limits))

    def with_gamma(self, gamma: float) -> DisplaySettings:
        """The same settings with another gamma (the viewer's control)."""
        return replace(self, gamma=float(gamma))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded with a session so a screenshot can be reproduced)."""
        return {"channels": list(self.channels), "colors": [list(c) for c in self.colors],
                "limits": [[float(lo), float(hi)] for lo, hi in self.limits], "gamma": float(self.gamma),
                "modality": self.modality, "source": dict(self.source)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DisplaySettings:
        colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in d["colors"])
        return cls(tuple(int(c) for c in d["channels"]), colors,
                   tuple((float(lo), float(hi)) for lo, hi in d["limits"]), float(d.get("gamma", 1.0)),
                   str(d.get("modality", "fluorescence")), dict(d.get("source", {})))


def is_dark_background(gray: np.ndarray) -> bool:
    """True when the border of a (H, W) gray image (its outer 5%) is dark: a fluorescence slide."""
    g = np.asarray(gray, np.float32)
    m = max(1, min(g.shape) // 20)
    frame = np.concatenate([g[:m].ravel(), g[-m:].ravel(), g[:, :m].ravel(), g[:, -m:].ravel()])
    return bool(np.median(frame) < FLUORESCENCE_BORDER_GRAY)


def settings_from_pixels(pixels: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                         gamma: float = 1.0, modality: str = "auto") -> DisplaySettings:
    """Display settings from a low-resolution view ``pixels`` (H, W, C): identity for brightfield; for
    fluorescence per-channel percentile limits of the channels that carry signal."""
    arr = pixels if pixels.ndim == 3 else pixels[:, :, None]
    if modality == "auto":
        modality = "fluorescence" if is_dark_background(arr.astype(np.float32).mean(axis=2)) else "brightfield"
    if modality == "brightfield" and arr.shape[2] == 3 and arr.dtype == np.uint8:
        return DisplaySettings(gamma=float(gamma), modality="brightfield")
    flat = arr.reshape(-1, arr.shape[2]).astype(np.float32)
    lo, hi = np.percentile(flat, percentiles, axis=0)
    top = float(hi.max())
    chans = [c for c in range(arr.shape[2]) if hi[c] >= SIGNAL_SHARE * top] or [int(np.argmax(hi))]
    limits = tuple((float(lo[c]), float(max(hi[c], lo[c] + 1.0))) for c in chans)
    # one channel with signal (a single-stain scan stored as RGB, or a gray image) is shown in gray: a
    # pure blue or red channel alone is dark to the eye (blue is ~11% of luminance)
    colors = ((255, 255, 255),) if len(chans) == 1 else tuple(CHANNEL_COLORS[c % len(CHANNEL_COLORS)] for c in chans)
    return DisplaySettings(tuple(chans), colors, limits, float(gamma), modality,
                           {"percentiles": list(percentiles), "view": list(arr.shape[:2])})


_AUTO: LRUCache[tuple, DisplaySettings] = LRUCache(max_items=64)


def auto_display(slide, percentiles: tuple[float, float] = DEFAULT_PERCENTILES, gamma: float = 1.0,
                 view_size: int = 1024) -> DisplaySettings:
    """The slide's display settings from its own statistics (a ``view_size`` raw thumbnail; cached per
    file version)."""
    try:
        st = os.stat(slide.path)
        key: tuple | None = (str(slide.path), st.st_mtime_ns, st.st_size, tuple(percentiles), view_size)
    except (OSError, TypeError, AttributeError):
        key = None
    if key is not None:
        hit = _AUTO.get(key)
        if hit is not None:
            return hit if gamma == hit.gamma else hit.with_gamma(gamma)
    s = settings_from_pixels(slide.get_thumbnail(view_size), percentiles, 1.0)
    if key is not None:
        _AUTO.put(key, s)
    return s if gamma == 1.0 else s.with_gamma(gamma)


def resolve_display(slide, display: Any) -> DisplaySettings | None:
    """``display`` as settings: None/False/"raw" → None (raw pixels), True/"auto" → :func:`auto_display`,
    a dict → :meth:`DisplaySettings.from_dict`, settings as they are."""
    if display is None or display is False or display == "raw":
        return None
    if display is True or display == "auto":
        return auto_display(slide)
    if isinstance(display, DisplaySettings):
        return display
    if isinstance(display, dict):
        return DisplaySettings.from_dict(display)
    raise InvalidParameterError(f"display must be None, 'raw', 'auto', a dict or DisplaySettings, got {display!r}")


def apply_display(pixels: np.ndarray, settings: DisplaySettings | None) -> np.ndarray:
    """(H, W, C) or (H, W) pixels of any dtype → (H, W, 3) uint8 RGB for a person: each chosen channel
    is scaled by its limits, raised to ``gamma``, coloured and the colours added (clipped). ``None`` or
    identity settings return RGB uint8 input unchanged."""
    arr = pixels if pixels.ndim == 3 else pixels[:, :, None]
    if settings is None or (settings.identity and arr.dtype == np.uint8 and arr.shape[2] == 3):
        return pixels
    if max(settings.channels) >= arr.shape[2]:
        raise InvalidParameterError(f"display channels {settings.channels} but the image has {arr.shape[2]}")
    out = np.zeros(arr.shape[:2] + (3,), np.float32)
    for c, color, (lo, hi) in zip(settings.channels, settings.colors, settings.limits):
        v = np.clip((arr[:, :, c].astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
        if settings.gamma != 1.0:
            v = np.power(v, np.float32(settings.gamma))
        out += v[:, :, None] * (np.asarray(color, np.float32) / 255.0)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
