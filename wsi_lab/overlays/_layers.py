"""Layer classes: the :class:`Layer` base, masks, coloured tiles and tile outlines."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError
from wsi_lab.overlays._colors import Color, _hex, _rgb
from wsi_lab.overlays._raster import _centre_range, _check_box, _paint


# -- array <-> JSON -----------------------------------------------------------------------------
def _enc(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _dec(d: Mapping) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def _pyval(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# -- layers -------------------------------------------------------------------------------------
class Layer:
    """Base overlay: ``name``, ``kind`` ("mask" | "grid" | "heatmap" | "categorical" | "image"),
    ``opacity`` (0–1) and ``render_region``."""

    kind: str = "image"

    def __init__(self, name: str, opacity: float = 1.0) -> None:
        if not (0.0 <= float(opacity) <= 1.0):
            raise InvalidParameterError(f"opacity must be between 0 and 1, got {opacity!r}")
        self.name = str(name)
        self.opacity = float(opacity)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} kind={self.kind} opacity={self.opacity}>"

    def render_region(self, box: tuple[float, float, float, float], out_size: tuple[int, int],
                      apply_opacity: bool = True) -> np.ndarray:
        """Render the level-0 box ``(x, y, w, h)`` at ``out_size`` = (width, height); returns
        (H, W, 4) uint8 RGBA, alpha 0 where there is no data and ``255 * opacity`` elsewhere
        (``apply_opacity=False`` leaves it at 255 for viewers that apply opacity themselves)."""
        bx, by, bw, bh, ow, oh = _check_box(box, out_size)
        rgba = self._render(bx, by, bw, bh, ow, oh)
        if apply_opacity and self.opacity < 1.0:
            rgba[..., 3] = (rgba[..., 3].astype(np.float32) * self.opacity + 0.5).astype(np.uint8)
        return rgba

    def _render(self, bx, by, bw, bh, ow, oh) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def bounds(self) -> tuple[float, float, float, float] | None:
        """Level-0 ``(x, y, w, h)`` box that holds all the data, or ``None`` when empty."""
        return None

    def legend(self) -> dict:
        """JSON-able legend ({"type": "continuous" | "categorical" | "color" | "rgb", ...})."""
        return {"type": "none"}

    def _state(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _from_state(cls, d: dict) -> Layer:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_json(self) -> str:
        """JSON text that :meth:`Layer.from_json` turns back into an equal layer (in any process)."""
        return json.dumps({"class": type(self).__name__, "name": self.name, "opacity": self.opacity,
                           "kind": self.kind, **self._state()})

    @staticmethod
    def from_json(data: str | bytes | Mapping) -> Layer:
        """Rebuild a layer from :meth:`to_json` output (text or the parsed dict)."""
        d = json.loads(data) if isinstance(data, (str, bytes)) else dict(data)
        classes: dict[str, type[Layer]] = {"MaskLayer": MaskLayer, "TileLayer": TileLayer, "GridLayer": GridLayer}
        cls = classes.get(str(d.get("class")))
        if cls is None:
            raise InvalidParameterError(f"not a serialised wsi_lab layer (class={d.get('class')!r})")
        return cls._from_state(d)


class MaskLayer(Layer):
    """A boolean (H, W) mask at ``downsample`` level-0 pixels per mask pixel, drawn in one colour: filled,
    or with ``outline=True`` only its boundary (one output pixel wide at every zoom, so the morphology
    under the mask stays visible)."""

    kind = "mask"

    def __init__(self, mask: np.ndarray, downsample: float | tuple[float, float], color: Color = (0, 255, 0),
                 opacity: float = 0.4, name: str = "tissue", outline: bool = False) -> None:
        super().__init__(name, opacity)
        self.outline = bool(outline)
        m = np.asarray(mask)
        if m.ndim != 2 or m.size == 0:
            raise InvalidParameterError(f"mask must be a non-empty 2-D (H, W) array, got shape {m.shape}")
        self.mask = m.astype(bool)
        dx, dy = (downsample, downsample) if isinstance(downsample, (int, float, np.number)) else downsample
        if not (float(dx) > 0 and float(dy) > 0):
            raise InvalidParameterError(f"mask downsample must be positive, got {downsample!r}")
        self.downsample = (float(dx), float(dy))
        self.color = _rgb(color)

    def _render(self, bx, by, bw, bh, ow, oh):
        H, W = self.mask.shape
        dx, dy = self.downsample
        pad = 1 if self.outline else 0  # one output pixel around the box: neighbours decide the boundary
        mx = np.floor((bx + (np.arange(-pad, ow + pad) + 0.5) * bw / ow) / dx).astype(np.int64)
        my = np.floor((by + (np.arange(-pad, oh + pad) + 0.5) * bh / oh) / dy).astype(np.int64)
        vx, vy = (mx >= 0) & (mx < W), (my >= 0) & (my < H)
        on = np.zeros((oh + 2 * pad, ow + 2 * pad), bool)
        on[np.ix_(vy, vx)] = self.mask[np.ix_(my[vy], mx[vx])]
        if self.outline:
            inner = on[1:-1, 1:-1] & on[:-2, 1:-1] & on[2:, 1:-1] & on[1:-1, :-2] & on[1:-1, 2:]
            on = on[1:-1, 1:-1] & ~inner
        c32 = np.array([*self.color, 255], np.uint8).view(np.uint32)[0]
        return np.where(on, c32, np.uint32(0)).view(np.uint8).reshape(oh, ow, 4)

    def bounds(self):
        H, W = self.mask.shape
        return (0.0, 0.0, W * self.downsample[0], H * self.downsample[1])

    def legend(self):
        return {"type": "color", "label": self.name, "color": _hex(self.color)}

    def _state(self):
        return {"mask": _enc(np.packbits(self.mask, axis=None)), "shape": list(self.mask.shape),
                "downsample": list(self.downsample), "color": list(self.color), "outline": self.outline}

    @classmethod
    def _from_state(cls, d):
        n = d["shape"][0] * d["shape"][1]
        bits = _dec(d["mask"])
        if not 0 < n <= bits.size * 8:  # the shape must fit the bits sent (no padding to a huge claimed shape)
            raise InvalidParameterError(f"mask shape {d['shape']} does not match its {bits.size * 8} packed bits")
        mask = np.unpackbits(bits, count=n).reshape(d["shape"]).astype(bool)
        return cls(mask, tuple(d["downsample"]), tuple(d["color"]), d["opacity"], d["name"],
                   bool(d.get("outline", False)))


class TileLayer(Layer):
    """Square tiles ``(x, y, size)`` in level-0 pixels, each with an RGBA colour (alpha 0 = no data).

    Tiles are kept sorted by ``x`` so a region only looks at the tiles whose x-range can reach it."""

    def __init__(self, x, y, size, colors: np.ndarray, kind: str, name: str, opacity: float = 1.0,
                 legend: dict | None = None) -> None:
        super().__init__(name, opacity)
        x, y, size = (np.asarray(a, float).ravel() for a in (x, y, size))
        colors = np.asarray(colors, np.uint8)
        if not (len(x) == len(y) == len(size) == len(colors)) or colors.ndim != 2 or colors.shape[1] != 4:
            raise InvalidParameterError("x, y, size and (N, 4) colours must have one row per tile")
        keep = colors[:, 3] > 0
        order = np.argsort(x[keep], kind="stable")  # stable: later rows still win among overlaps
        self.x, self.y, self.size = x[keep][order], y[keep][order], size[keep][order]
        self.colors = colors[keep][order]
        self._row = np.flatnonzero(keep)[order]  # original row of each sorted tile
        # colours as uint32 with a transparent sentinel at the end, for one gather per render
        self._c32 = np.concatenate([self.colors, np.zeros((1, 4), np.uint8)]).view(np.uint32).ravel()
        self.kind = kind
        self._legend = legend or {"type": "none"}
        self._max_size = float(self.size.max()) if len(self.size) else 0.0
        self._n_total = len(x)

    def __len__(self) -> int:
        return self._n_total

    def _visible(self, bx, by, bw, bh) -> np.ndarray:
        lo = np.searchsorted(self.x, bx - self._max_size, side="left")
        hi = np.searchsorted(self.x, bx + bw, side="left")
        sel = np.arange(lo, hi)
        x, y, s = self.x[sel], self.y[sel], self.size[sel]
        hit = (x + s > bx) & (y + s > by) & (y < by + bh)
        sel = sel[hit]
        return sel[np.argsort(self._row[sel], kind="stable")]  # table order: later rows paint last

    def _render(self, bx, by, bw, bh, ow, oh):
        sel = self._visible(bx, by, bw, bh)
        out = np.zeros((oh, ow, 4), np.uint8)
        if len(sel) == 0:
            return out
        sx, sy = ow / bw, oh / bh
        x0, x1 = _centre_range(self.x[sel], self.x[sel] + self.size[sel], bx, sx, ow)
        y0, y1 = _centre_range(self.y[sel], self.y[sel] + self.size[sel], by, sy, oh)
        rank, ids = self._paint_ranks(sel, x0, x1, y0, y1, ow, oh)
        # colours of the painted rectangles with the transparent sentinel last, so rank -1 picks it
        return self._c32[np.append(ids, len(self.x))][rank].view(np.uint8).reshape(oh, ow, 4)

    def _paint_ranks(self, sel, x0, x1, y0, y1, ow, oh) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) rectangle index per pixel (-1 where none) and each rectangle's sorted-tile index."""
        return _paint((ow, oh), x0, x1, y0, y1), sel

    def bounds(self):
        if not len(self.x):
            return None
        x0, y0 = self.x.min(), self.y.min()
        return (float(x0), float(y0), float((self.x + self.size).max() - x0), float((self.y + self.size).max() - y0))

    def legend(self):
        return dict(self._legend)

    def _state(self):
        return {"x": _enc(self.x), "y": _enc(self.y), "size": _enc(self.size), "colors": _enc(self.colors),
                "legend": self._legend}

    @classmethod
    def _from_state(cls, d):
        return cls(_dec(d["x"]), _dec(d["y"]), _dec(d["size"]), _dec(d["colors"]), d["kind"], d["name"],
                   d["opacity"], d["legend"])


class GridLayer(TileLayer):
    """Tile outlines, ``line_width`` output pixels wide, drawn inside each tile's box.

    The outlines are placed in level-0 geometry: each border is the level-0 strip
    ``[x, x + line_width / scale)`` (and likewise for the other three sides) rasterised like any box, so
    a region that cuts through a tile (a deep-zoom tile with overlap, a viewport edge) draws no line at
    its own edge, and neighbouring regions of one zoom level agree pixel for pixel."""

    def __init__(self, x, y, size, color: Color = (255, 255, 0), line_width: int = 1, name: str = "tiles",
                 opacity: float = 1.0) -> None:
        if int(line_width) < 1:
            raise InvalidParameterError(f"line_width must be ≥ 1 output pixel, got {line_width!r}")
        self.color = _rgb(color)
        self.line_width = int(line_width)
        n = len(np.asarray(x).ravel())
        colors = np.tile(np.array([*self.color, 255], np.uint8), (n, 1))
        super().__init__(x, y, size, colors, "grid", name, opacity,
                         {"type": "color", "label": name, "color": _hex(self.color)})

    def _render(self, bx, by, bw, bh, ow, oh):
        sel = self._visible(bx, by, bw, bh)
        out = np.zeros((oh, ow, 4), np.uint8)
        if len(sel) == 0:
            return out
        sx, sy = ow / bw, oh / bh
        x, y, s = self.x[sel], self.y[sel], self.size[sel]
        # border widths in level-0 pixels (at most half the tile, so the two borders never cross)
        lx = np.minimum(self.line_width / sx, s / 2)
        ly = np.minimum(self.line_width / sy, s / 2)
        strips = [  # (x0, x1, y0, y1) of the left, right, top and bottom borders, level 0
            (x, x + lx, y, y + s), (x + s - lx, x + s, y, y + s),
            (x, x + s, y, y + ly), (x, x + s, y + s - ly, y + s),
        ]
        parts = []
        for x0, x1, y0, y1 in strips:
            i0, i1 = _centre_range(x0, x1, bx, sx, ow)
            j0, j1 = _centre_range(y0, y1, by, sy, oh)
            parts.append((i0, i1, j0, j1))
        X0, X1, Y0, Y1 = (np.concatenate(p) for p in zip(*parts))
        rank = _paint((ow, oh), X0, X1, Y0, Y1)
        ids = np.tile(sel, 4)
        return self._c32[np.append(ids, len(self.x))][rank].view(np.uint8).reshape(oh, ow, 4)

    def _state(self):
        return {"x": _enc(self.x), "y": _enc(self.y), "size": _enc(self.size), "color": list(self.color),
                "line_width": self.line_width}

    @classmethod
    def _from_state(cls, d):
        return cls(_dec(d["x"]), _dec(d["y"]), _dec(d["size"]), tuple(d["color"]), d["line_width"], d["name"],
                   d["opacity"])


