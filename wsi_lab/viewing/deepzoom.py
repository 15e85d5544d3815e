"""Deep-zoom tile pyramids over a :class:`~wsi_lab.slide.Slide` (no UI or server imports).

Geometry follows the Deep Zoom Image (DZI) convention used by OpenSeadragon and by OpenSlide's
``DeepZoomGenerator``: level ``L`` of ``level_count`` has downsample ``2 ** (level_count - 1 - L)``
relative to slide level 0 (the last level is full resolution, level 0 is 1x1 px); its size is
``ceil(width / ds) x ceil(height / ds)``. Tiles are ``tile_size`` px with ``overlap`` px of
neighbouring pixels on each inner edge (254/1 like OpenSlide, or 256/0).

Coordinates: level-0 boxes are ``(x, y, width, height)`` in slide level-0 pixels; tile sizes are
``(width, height)``; arrays are ``(H, W, C)`` uint8 (RGB slide tiles, RGBA overlay tiles).

Overlays: a *layer* is any object with ``render_region(box, out_size) -> (h, w, 4) uint8`` (see
``wsi_lab.overlays``). :class:`LayerSnapshot` freezes a layer into a bounded RGBA raster over the whole
slide; it is the unit shipped between processes (kernel → browser → Jupyter server), and every
consumer renders overlay tiles from the same snapshot with the same code, so tiles served over HTTP and
over a widget comm are identical.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from wsi_lab.errors import InvalidParameterError
from wsi_lab.io import LRUCache, encode_image

log = logging.getLogger(__name__)

__all__ = ["DeepZoom", "TileSpec", "LayerSnapshot", "snapshot_layer", "RenderableLayer"]

#: largest snapshot raster accepted (pixels): 64 MP = 256 MiB of RGBA
MAX_SNAPSHOT_PIXELS = 64 * 2**20


class RenderableLayer(Protocol):
    """What the deep-zoom code needs from an overlay layer."""

    def render_region(self, box: tuple[float, float, float, float], out_size: tuple[int, int]) -> np.ndarray: ...


@dataclass(frozen=True)
class TileSpec:
    """Where one deep-zoom tile comes from: its level-0 ``box`` (x, y, w, h) = exactly ``size * ds`` (it may
    reach past the slide edge on the last column/row), the output ``size``
    (width, height) in deep-zoom pixels, and the slide ``slide_level`` read for it."""

    level: int
    col: int
    row: int
    box: tuple[int, int, int, int]
    size: tuple[int, int]
    slide_level: int


class DeepZoom:
    """Deep-zoom pyramid over ``slide``: tile geometry, pixels, JPEG bytes (LRU-cached) and overlay tiles.

    ``tile_size``/``overlap`` in deep-zoom pixels; ``quality`` is the JPEG quality; ``cache_bytes`` bounds
    the encoded-tile cache; ``name`` labels error messages (default: the slide path). Safe to call from
    several threads (the slide backends serialise or parallelise their own reads). Bad levels or tile
    addresses raise :class:`InvalidParameterError`.
    """

    LEVEL_IMAGE_PIXELS = 2**21  # 2 MP: whole-level images kept for the cheap low-resolution levels

    def __init__(self, slide: Any, tile_size: int = 254, overlap: int = 1, quality: int = 80,
                 cache_bytes: int = 64 * 2**20, name: str | None = None, display: Any = None) -> None:
        if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
            raise InvalidParameterError(f"tile_size must be a positive integer, got {tile_size!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= 2 * overlap < tile_size:
            raise InvalidParameterError(f"overlap must be an integer in [0, tile_size/2), got {overlap!r}")
        if not 1 <= int(quality) <= 100:
            raise InvalidParameterError(f"JPEG quality must be in 1..100, got {quality!r}")
        self.slide = slide
        self.name = name or str(getattr(slide, "path", "slide"))
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        self.quality = int(quality)
        self._cache: LRUCache[Any, bytes] = LRUCache(max_bytes=cache_bytes)
        self._displays: LRUCache[str, tuple[str, Any]] = LRUCache(max_items=32)
        self.set_display(display)
        w, h = (int(v) for v in slide.dimensions)
        dims = [(w, h)]
        while dims[-1] != (1, 1):
            cw, ch = dims[-1]
            dims.append((max(1, math.ceil(cw / 2)), max(1, math.ceil(ch / 2))))
        dims.reverse()
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(dims)
        self.level_tiles: tuple[tuple[int, int], ...] = tuple(
            (math.ceil(dw / self.tile_size), math.ceil(dh / self.tile_size)) for dw, dh in dims)
        self._slide_levels = tuple(slide.get_best_level_for_downsample(self.level_downsample(i))
                                   for i in range(len(dims)))
        # Deep-zoom levels far below the deepest stored slide level (single-level slides, thin pyramids)
        # would read 4x+ more pixels than they show for every tile: those whose whole image is at most
        # ``LEVEL_IMAGE_PIXELS`` are rendered once (the largest from the slide, bounded-memory, each
        # smaller one by halving the next) and their tiles are cropped from it.
        self._level_images: dict[int, np.ndarray] = {}
        self._level_lock = threading.RLock()
        self._cached_levels = frozenset(
            i for i, (lw, lh) in enumerate(dims)
            if lw * lh <= self.LEVEL_IMAGE_PIXELS
            and self.level_downsample(i) >= 4 * float(slide.level_downsamples[self._slide_levels[i]]))

    # -- geometry -----------------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def tile_count(self) -> int:
        return sum(c * r for c, r in self.level_tiles)

    def level_downsample(self, level: int) -> int:
        """Downsample of deep-zoom ``level`` relative to slide level 0 (a power of two)."""
        return 2 ** (self.level_count - 1 - level)

    def _check(self, level: Any, col: Any, row: Any) -> tuple[int, int, int]:
        for name, v in (("level", level), ("col", col), ("row", row)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InvalidParameterError(f"deep-zoom tile {name} must be an integer, got {v!r}")
        if not 0 <= level < self.level_count:
            raise InvalidParameterError(
                f"{self.name}: deep-zoom level {level} does not exist; levels are 0..{self.level_count - 1}")
        cols, rows = self.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise InvalidParameterError(
                f"{self.name}: tile ({col}, {row}) is outside level {level}, which has {cols}x{rows} tiles")
        return int(level), int(col), int(row)

    def tile_spec(self, level: int, col: int, row: int) -> TileSpec:
        """Level-0 box, output size and slide level of tile ``(col, row)`` of deep-zoom ``level``."""
        level, col, row = self._check(level, col, row)
        ts, ov = self.tile_size, self.overlap
        lw, lh = self.level_dimensions[level]
        cols, rows = self.level_tiles[level]
        zx0 = col * ts - (ov if col > 0 else 0)
        zy0 = row * ts - (ov if row > 0 else 0)
        zx1 = min(lw, (col + 1) * ts + (ov if col < cols - 1 else 0))
        zy1 = min(lh, (row + 1) * ts + (ov if row < rows - 1 else 0))
        ds = self.level_downsample(level)
        # deep-zoom pixel i of this level covers level-0 [i * ds, (i + 1) * ds): the last column/row
        # may reach past the slide's edge (those pixels are edge-extended, never stretched)
        x0, y0 = zx0 * ds, zy0 * ds
        w0, h0 = (zx1 - zx0) * ds, (zy1 - zy0) * ds
        return TileSpec(level, col, row, (x0, y0, w0, h0), (zx1 - zx0, zy1 - zy0), self._slide_levels[level])

    def dzi_xml(self, fmt: str = "jpeg") -> str:
        """The ``.dzi`` XML descriptor of this pyramid."""
        w, h = self.level_dimensions[-1]
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" '
                f'Overlap="{self.overlap}" TileSize="{self.tile_size}"><Size Width="{w}" Height="{h}"/></Image>\n')

    def info(self) -> dict[str, Any]:
        """JSON-able description: size, tile geometry, levels, µm/px (``None`` when unknown) and the display
        settings the tiles are encoded with (``None``: raw), so a view can be reproduced."""
        w, h = self.level_dimensions[-1]
        mpp = getattr(self.slide, "mpp", None)
        return {"width": w, "height": h, "tile_size": self.tile_size, "overlap": self.overlap,
                "level_count": self.level_count, "format": "jpeg",
                "mpp": list(mpp) if mpp else None,
                "display": self.display.to_dict() if self.display is not None else None}

    # -- pixels -------------------------------------------------------------------------------
    def _level_image(self, level: int) -> np.ndarray:
        """Whole deep-zoom ``level`` as (H, W, 3) uint8 (only for levels in ``_cached_levels``)."""
        with self._level_lock:  # re-entrant: a level is made by halving the next one
            img = self._level_images.get(level)
            if img is None:
                lw, lh = self.level_dimensions[level]
                if level + 1 in self._cached_levels:
                    up = self._level_image(level + 1)  # exact 2x2 averages: pad odd sizes by edge pixels
                    up = np.pad(up, ((0, 2 * lh - up.shape[0]), (0, 2 * lw - up.shape[1]), (0, 0)), mode="edge")
                    img = np.asarray(Image.fromarray(up).resize((lw, lh), Image.Resampling.BOX))
                else:
                    img = self._render_level(level)
                self._level_images[level] = img
            return img

    def _render_level(self, level: int) -> np.ndarray:
        """Read the whole of deep-zoom ``level`` from its slide level in horizontal bands (≤ 16 MP read
        at a time) whose edges fall on output rows, resizing each band like a tile (area filter)."""
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsample(level)
        sl = self._slide_levels[level]
        sd = float(self.slide.level_downsamples[sl])
        slw, slh = self.slide.level_dimensions[sl]
        band = max(1, int(16 * 2**20 / (slw * ds / sd)))
        # read exactly ``ds / sd`` slide pixels per output pixel (edge pixels replicated past the slide's
        # end) so the level is an exact area-average, like the tiles of the levels above it
        full_w = max(slw, math.ceil(lw * ds / sd))
        out = np.empty((lh, lw, 3), np.uint8)
        for oy in range(0, lh, band):
            oh = min(band, lh - oy)
            ly = int(math.floor(oy * ds / sd))
            want = math.ceil(oh * ds / sd)
            rh = max(1, min(want, slh - ly))
            arr = self.slide.read_region((0, int(round(ly * sd))), sl, (slw, rh))
            if rh < want or slw < full_w:
                arr = np.pad(arr, ((0, want - rh), (0, full_w - slw), (0, 0)), mode="edge")
            out[oy:oy + oh] = np.asarray(Image.fromarray(arr).resize((lw, oh), Image.Resampling.BOX))
        return out

    def get_tile(self, level: int, col: int, row: int) -> np.ndarray:
        """Pixels of one tile as (H, W, 3) uint8: the best slide level is read and resized (area filter)."""
        spec = self.tile_spec(level, col, row)
        if level in self._cached_levels:
            ds = self.level_downsample(level)
            zx, zy = spec.box[0] // ds, spec.box[1] // ds
            return np.ascontiguousarray(self._level_image(level)[zy:zy + spec.size[1], zx:zx + spec.size[0]])
        x0, y0, w0, h0 = spec.box
        sl = spec.slide_level
        sd = float(self.slide.level_downsamples[sl])
        slw, slh = self.slide.level_dimensions[sl]
        lx, ly = int(math.floor(x0 / sd)), int(math.floor(y0 / sd))
        want_w, want_h = math.ceil(w0 / sd), math.ceil(h0 / sd)
        rw = max(1, min(want_w, slw - lx))
        rh = max(1, min(want_h, slh - ly))
        arr = self.slide.read_region((x0, y0), sl, (rw, rh))
        if (rw, rh) != (want_w, want_h):
            arr = np.pad(arr, ((0, want_h - rh), (0, want_w - rw), (0, 0)), mode="edge")
            rw, rh = want_w, want_h
        if (rw, rh) != spec.size:
            img = Image.fromarray(arr)
            resample = Image.Resampling.BOX if rw >= spec.size[0] else Image.Resampling.BILINEAR
            arr = np.asarray(img.resize(spec.size, resample))
        return arr

    def set_display(self, display: Any) -> None:
        """How encoded tiles look (:mod:`wsi_lab.slide.display`: None raw, ``"auto"``, settings); the
        pixels of :meth:`get_tile` stay raw. Clears the encoded-tile cache when it changes."""
        from wsi_lab.slide.display import resolve_display

        new = resolve_display(self.slide, display)
        if new != getattr(self, "display", None):
            self._cache.clear()
        self.display = new

    def display_for_token(self, token: str | None) -> Any:
        """The display settings a tile request names (:func:`~wsi_lab.viewing.wire.display_from_token`;
        automatic limits resolved from this slide, cached per token); ``None``/empty: this pyramid's own."""
        if not token:
            return self.display
        hit = self._displays.get(token)
        if hit is None:
            from wsi_lab.slide.display import resolve_display
            from wsi_lab.viewing.wire import display_from_token

            spec = display_from_token(token)
            hit = ("raw", None) if spec == "raw" else ("settings", resolve_display(self.slide, spec))
            self._displays.put(token, hit)
        return hit[1]

    def get_tile_bytes(self, level: int, col: int, row: int, display: Any = "default") -> bytes:
        """JPEG bytes of one tile (cached), shown with this pyramid's display settings or with ``display``
        (settings, or None for raw pixels)."""
        shown = self.display if isinstance(display, str) and display == "default" else display
        key = (level, col, row) if shown is self.display else (level, col, row, shown)
        data = self._cache.get(key)
        if data is None:
            tile = self.get_tile(level, col, row)
            if shown is not None:
                from wsi_lab.slide.display import apply_display

                tile = apply_display(tile, shown)
            data = encode_image(tile, "jpeg", self.quality)
            self._cache.put(key, data)
        return data

    def get_overlay_tile(self, layer: RenderableLayer, level: int, col: int, row: int,
                         apply_opacity: bool = True) -> np.ndarray:
        """(H, W, 4) uint8 RGBA of ``layer`` over the same level-0 box and size as the slide tile.
        ``apply_opacity=False`` asks layers that support it for full alpha (the viewer applies opacity)."""
        spec = self.tile_spec(level, col, row)
        kw = {} if apply_opacity or not _accepts_apply_opacity(layer) else {"apply_opacity": False}
        out = np.asarray(layer.render_region(spec.box, out_size=spec.size, **kw))
        if out.shape != (spec.size[1], spec.size[0], 4) or out.dtype != np.uint8:
            raise InvalidParameterError(
                f"layer {getattr(layer, 'name', layer)!r} returned {out.shape} {out.dtype}; expected "
                f"({spec.size[1]}, {spec.size[0]}, 4) uint8")
        return out

    def get_overlay_bytes(self, layer: RenderableLayer, level: int, col: int, row: int, key: str | None = None,
                          apply_opacity: bool = True) -> bytes:
        """PNG bytes of an overlay tile; cached when ``key`` (a stable id of the layer's content) is given."""
        ck = ("overlay", key, apply_opacity, level, col, row) if key else None
        data = self._cache.get(ck) if ck else None
        if data is None:
            data = encode_image(self.get_overlay_tile(layer, level, col, row, apply_opacity), "png")
            if ck:
                self._cache.put(ck, data)
        return data


def _accepts_apply_opacity(layer: Any) -> bool:
    try:
        return "apply_opacity" in inspect.signature(layer.render_region).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class LayerSnapshot:
    """An RGBA raster of one layer over the whole slide: raster pixel ``(i, j)`` covers the level-0 box
    ``(j * downsample, i * downsample, downsample, downsample)``. Renders regions by nearest sampling."""

    rgba: np.ndarray
    downsample: float
    name: str = "layer"
    opacity: float = 1.0
    legend: dict = field(default_factory=dict)
    key: str = ""

    def __post_init__(self) -> None:
        self.rgba = np.ascontiguousarray(self.rgba)
        if self.rgba.ndim != 3 or self.rgba.shape[2] != 4 or self.rgba.dtype != np.uint8:
            raise InvalidParameterError(f"layer raster must be (H, W, 4) uint8, got {self.rgba.shape} {self.rgba.dtype}")
        if not (self.downsample > 0 and math.isfinite(self.downsample)):
            raise InvalidParameterError(f"layer downsample must be a positive number, got {self.downsample!r}")
        if not self.key:
            h = hashlib.sha256(self.rgba.data)  # C-contiguous: hashed in place, no copy
            h.update(repr((self.rgba.shape, float(self.downsample))).encode())
            self.key = h.hexdigest()[:20]

    def render_region(self, box: tuple[float, float, float, float], out_size: tuple[int, int]) -> np.ndarray:
        """(out_h, out_w, 4) uint8 of level-0 ``box`` = (x, y, w, h); transparent outside the raster."""
        x, y, w, h = (float(v) for v in box)
        ow, oh = (int(v) for v in out_size)
        if ow <= 0 or oh <= 0 or w <= 0 or h <= 0:
            raise InvalidParameterError(f"render_region needs a positive box and out_size, got {box!r}, {out_size!r}")
        d = float(self.downsample)
        cols = np.floor((x + (np.arange(ow) + 0.5) * (w / ow)) / d).astype(np.int64)
        rows = np.floor((y + (np.arange(oh) + 0.5) * (h / oh)) / d).astype(np.int64)
        rh, rw = self.rgba.shape[:2]
        cok = (cols >= 0) & (cols < rw)
        rok = (rows >= 0) & (rows < rh)
        out = self.rgba[np.clip(rows, 0, rh - 1)[:, None], np.clip(cols, 0, rw - 1)[None, :]]
        out[~(rok[:, None] & cok[None, :])] = 0
        return out

    def to_png(self) -> bytes:
        return encode_image(self.rgba, "png")

    @classmethod
    def from_png(cls, data: bytes, downsample: float, **kw: Any) -> LayerSnapshot:
        """Decode a PNG made by :meth:`to_png` (any PNG is converted to RGBA)."""
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_SNAPSHOT_PIXELS:  # checked from the header, before decoding
                raise InvalidParameterError(f"layer raster {img.width}x{img.height} is too large (max 64 MP)")
            img.load()
        except InvalidParameterError:
            raise
        except Exception as exc:  # PIL raises many types for bad data
            raise InvalidParameterError(f"layer raster is not a readable PNG: {exc}") from exc
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        return cls(np.asarray(rgba), downsample, **kw)


def snapshot_layer(layer: Any, dimensions: tuple[int, int], max_side: int = 4096) -> LayerSnapshot:
    """Render ``layer`` over a slide of level-0 ``dimensions`` (width, height) into a
    :class:`LayerSnapshot` whose longer side is at most ``max_side`` raster pixels (downsample ≥ 1)."""
    if isinstance(layer, LayerSnapshot):
        return layer
    W, H = (int(v) for v in dimensions)
    d = max(1, math.ceil(max(W, H) / max_side))
    ow, oh = math.ceil(W / d), math.ceil(H / d)
    rgba = np.asarray(layer.render_region((0, 0, ow * d, oh * d), out_size=(ow, oh)), dtype=np.uint8)
    if rgba.shape != (oh, ow, 4):
        raise InvalidParameterError(f"layer {getattr(layer, 'name', layer)!r} returned {rgba.shape}; expected ({oh}, {ow}, 4)")
    legend = layer.legend() if callable(getattr(layer, "legend", None)) else {}
    return LayerSnapshot(rgba, d, name=str(getattr(layer, "name", "layer")),
                         opacity=float(getattr(layer, "opacity", 1.0)), legend=legend)
