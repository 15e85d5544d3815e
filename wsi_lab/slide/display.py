"""Display settings: how pixels are shown to a person (contrast limits, gamma, channel colours).

The one rule for every display path (thumbnails, the slide browser, deep-zoom tiles, napari, overlay
backgrounds): a brightfield slide is shown as scanned; a fluorescence slide (dark background) gets, per
channel that carries signal, contrast limits from the slide's own statistics (the 0.5th and 99.5th
percentiles of a low-resolution view) and a gamma. Analysis never sees this: ``read_region`` and
``get_thumbnail()`` without ``display=`` return the raw pixels.
"""

from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError
from wsi_lab.io import LRUCache

__all__ = ["DisplaySettings", "auto_display", "apply_display", "resolve_display", "is_dark_background",
           "settings_from_pixels", "channel_metadata", "channel_options", "display_from_spec",
           "FLUORESCENCE_BORDER_GRAY", "DEFAULT_PERCENTILES", "CHANNEL_COLORS", "PERCENTILE_CHOICES"]

#: a slide whose border (median gray of the outer 5%) is darker than this is fluorescence
FLUORESCENCE_BORDER_GRAY = 100.0
#: contrast-limit percentiles taken from the slide's low-resolution view
DEFAULT_PERCENTILES = (0.5, 99.5)
#: display colour of channel i of an RGB read (red, green, blue); further channels cycle
CHANNEL_COLORS: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255),
                                                    (0, 255, 255), (255, 255, 0))
#: a channel whose upper limit is below this share of the brightest channel's carries no signal
SIGNAL_SHARE = 0.2
#: the (low, high) percentile pairs a person can pick for automatic contrast limits
PERCENTILE_CHOICES: tuple[tuple[float, float], ...] = ((0.5, 99.5), (0.1, 99.9), (1.0, 99.0), (2.0, 98.0),
                                                       (0.0, 100.0))


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
        if len(self.channels) > 64 or min(self.channels) < 0:
            raise InvalidParameterError(f"DisplaySettings: channels must be 1..64 indices >= 0, got {self.channels}")
        for color in self.colors:
            if len(color) != 3 or not all(0 <= int(v) <= 255 for v in color):
                raise InvalidParameterError(f"DisplaySettings: a colour is (r, g, b) in 0..255, got {color!r}")
        for lo, hi in self.limits:
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise InvalidParameterError(f"DisplaySettings: contrast limits need finite high > low, got {(lo, hi)}")

    @property
    def identity(self) -> bool:
        """True when applying the settings to an RGB uint8 image returns it unchanged."""
        return (self.channels == (0, 1, 2) and self.colors == CHANNEL_COLORS[:3] and self.gamma == 1.0
                and all(tuple(map(float, lim)) == (0.0, 255.0) for lim in self.limits))

    def with_gamma(self, gamma: float) -> DisplaySettings:
        """The same settings with another gamma (the viewer's control)."""
        return replace(self, gamma=float(gamma))

    @property
    def percentiles(self) -> tuple[float, float] | None:
        """The percentiles the limits were taken from (automatic limits), or None (set by hand)."""
        p = self.source.get("percentiles")
        return (float(p[0]), float(p[1])) if isinstance(p, (list, tuple)) and len(p) == 2 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded with a session so a screenshot can be reproduced): the limits in pixel
        values, and ``percentiles`` when they are automatic (None when set by hand)."""
        return {"channels": list(self.channels), "colors": [list(c) for c in self.colors],
                "limits": [[float(lo), float(hi)] for lo, hi in self.limits], "gamma": float(self.gamma),
                "modality": self.modality, "percentiles": list(self.percentiles) if self.percentiles else None,
                "source": dict(self.source)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DisplaySettings:
        """The settings of a :meth:`to_dict` form (limits as given; see :func:`display_from_spec` for
        automatic ones). Malformed input raises :class:`InvalidParameterError`."""
        try:
            colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in d["colors"])
            return cls(tuple(int(c) for c in d["channels"]), colors,
                       tuple((float(lo), float(hi)) for lo, hi in d["limits"]), float(d.get("gamma", 1.0)),
                       str(d.get("modality", "fluorescence")), dict(d.get("source") or {}))
        except InvalidParameterError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise InvalidParameterError(f"display settings are malformed ({type(exc).__name__}: {exc})") from exc


def channel_metadata(slide) -> list[dict[str, Any]]:
    """Names and colours of the slide's channels from its OME-XML (``[{"name", "color": (r, g, b) | None}]``,
    one per stored channel in file order), or ``[]`` when the slide carries no channel metadata."""
    props = getattr(slide, "properties", None) or {}
    text = str(props.get("tiff.ImageDescription", ""))
    if "<OME" not in text[:4096]:
        return []
    out: list[dict[str, Any]] = []
    for tag in re.findall(r"<(?:\w+:)?Channel\b[^>]*>", text)[:64]:
        name = re.search(r'\bName="([^"]*)"', tag)
        color = re.search(r'\bColor="(-?\d+)"', tag)
        rgb = None
        if color is not None:
            v = int(color.group(1)) & 0xFFFFFFFF  # OME: a signed 32-bit RGBA integer
            rgb = ((v >> 24) & 255, (v >> 16) & 255, (v >> 8) & 255)
        out.append({"name": html.unescape(name.group(1)) if name else f"channel {len(out)}", "color": rgb})
    return out


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
    s = _with_metadata_colors(settings_from_pixels(_view(slide, view_size), percentiles, 1.0), slide)
    if key is not None:
        _AUTO.put(key, s)
    return s if gamma == 1.0 else s.with_gamma(gamma)


_VIEWS: LRUCache[tuple, np.ndarray] = LRUCache(max_items=8)


def _view(slide, view_size: int) -> np.ndarray:
    """The raw ``view_size`` thumbnail the statistics come from (cached per file version)."""
    try:
        st = os.stat(slide.path)
        key: tuple | None = (str(slide.path), st.st_mtime_ns, st.st_size, view_size)
    except (OSError, TypeError, AttributeError):
        key = None
    hit = _VIEWS.get(key) if key is not None else None
    if hit is None:
        hit = np.asarray(slide.get_thumbnail(view_size))
        if key is not None:
            _VIEWS.put(key, hit)
    return hit


def _with_metadata_colors(s: DisplaySettings, slide) -> DisplaySettings:
    """Fluorescence settings of several channels take the colours the file names for them (OME)."""
    meta = channel_metadata(slide)
    if s.modality != "fluorescence" or len(s.channels) < 2 or not meta:
        return s
    colors = tuple(meta[c]["color"] if c < len(meta) and meta[c]["color"] else col
                   for c, col in zip(s.channels, s.colors))
    return replace(s, colors=colors)


def channel_options(slide, view_size: int = 1024) -> dict[str, Any]:
    """What a channel picker offers for ``slide`` (JSON-ready): ``modality``; per channel of the displayed
    RGB read its ``index``, ``name`` (from the file's metadata, else ``channel i``), default ``color``,
    automatic ``limits`` (the default percentiles) and whether it is ``shown`` by default; and the
    ``percentile_choices``. Brightfield slides get ``channels: []`` (no picker)."""
    auto = auto_display(slide, view_size=view_size)
    if auto.modality != "fluorescence":
        return {"modality": auto.modality, "channels": [], "percentile_choices": []}
    view = _view(slide, view_size)
    arr = view if view.ndim == 3 else view[:, :, None]
    lo, hi = np.percentile(arr.reshape(-1, arr.shape[2]).astype(np.float32), DEFAULT_PERCENTILES, axis=0)
    meta = channel_metadata(slide)
    chans = []
    for c in range(arr.shape[2]):
        shown = c in auto.channels
        color = (auto.colors[auto.channels.index(c)] if shown
                 else (meta[c]["color"] if c < len(meta) and meta[c]["color"] else CHANNEL_COLORS[c % len(CHANNEL_COLORS)]))
        chans.append({"index": c, "name": meta[c]["name"] if c < len(meta) else f"channel {c}",
                      "color": list(color), "limits": [float(lo[c]), float(max(hi[c], lo[c] + 1.0))], "shown": shown})
    return {"modality": auto.modality, "channels": chans,
            "percentile_choices": [list(p) for p in PERCENTILE_CHOICES]}


def display_from_spec(slide, spec: dict[str, Any]) -> DisplaySettings:
    """Settings from a picker's ``spec``: a :meth:`DisplaySettings.to_dict` form whose ``limits`` may be
    left out when ``percentiles`` [low, high] asks for automatic limits (taken per channel from the
    slide's low-resolution view, as :func:`auto_display` does). Bad values raise
    :class:`InvalidParameterError`."""
    if not isinstance(spec, dict):
        raise InvalidParameterError(f"display spec must be an object, got {type(spec).__name__}")
    pct = spec.get("percentiles")
    try:
        if pct is None:  # limits set by hand
            source = {k: v for k, v in (spec.get("source") or {}).items() if k != "percentiles"}
            settings = DisplaySettings.from_dict({**spec, "source": source})
            n = _view(slide, 1024).shape[2] if _view(slide, 1024).ndim == 3 else 1
            if max(settings.channels) >= n:
                raise InvalidParameterError(f"display channels {list(settings.channels)}: the slide has {n} channels")
            return settings
        p = (float(pct[0]), float(pct[1]))
        if not (0.0 <= p[0] < p[1] <= 100.0):
            raise InvalidParameterError(f"display percentiles must satisfy 0 <= low < high <= 100, got {list(pct)}")
        channels = [int(c) for c in spec["channels"]]
        if not channels or len(channels) > 64:
            raise InvalidParameterError(f"display spec needs 1..64 channels, got {len(channels)}")
        view = _view(slide, 1024)
        arr = view if view.ndim == 3 else view[:, :, None]
        if not all(0 <= c < arr.shape[2] for c in channels):
            raise InvalidParameterError(f"display channels {channels}: the slide has {arr.shape[2]} channels")
        lo, hi = np.percentile(arr.reshape(-1, arr.shape[2])[:, channels].astype(np.float32), p, axis=0)
        limits = [[float(a), float(max(b, a + 1.0))] for a, b in zip(lo, hi)]
        return DisplaySettings.from_dict({**spec, "limits": limits,
                                          "source": {"percentiles": list(p), "view": list(arr.shape[:2])}})
    except InvalidParameterError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InvalidParameterError(f"display spec is malformed ({type(exc).__name__}: {exc}): {str(spec)[:200]}") from exc


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
        return display_from_spec(slide, display)
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
