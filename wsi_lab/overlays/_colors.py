"""Colour tables without matplotlib: small anchor lists for continuous maps, a categorical palette."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

from wsi_lab.errors import InvalidParameterError

Color = str | Sequence[int]

# -- colours ------------------------------------------------------------------------------------
#: evenly spaced anchor colours; a 256-entry LUT is interpolated from them
COLORMAPS: dict[str, tuple[str, ...]] = {
    "viridis": ("#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884",
                "#44bf70", "#7ad151", "#bddf26", "#fde725"),
    "magma": ("#000004", "#140e36", "#3b0f70", "#641a80", "#8c2981", "#b73779", "#de4968",
              "#f7705c", "#fe9f6d", "#fecf92", "#fcfdbf"),
    "coolwarm": ("#3b4cc0", "#6282ea", "#8db0fe", "#b8d0f9", "#dddddd", "#f5c4ac", "#f49a7b",
                 "#de604d", "#b40426"),
    "gray": ("#000000", "#ffffff"),
    "reds": ("#fff5f0", "#fcbba1", "#fb6a4a", "#cb181d", "#67000d"),
}
#: categorical palette (tab10 then the light tab20 shades); more categories continue by golden-angle hues
PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
    "#dbdb8d", "#9edae5",
)


def _rgb(color: Color) -> tuple[int, int, int]:
    """``"#rrggbb"`` or an (r, g, b) tuple of 0–255 ints -> (r, g, b)."""
    if isinstance(color, str):
        s = color.lstrip("#")
        if len(s) == 6:
            try:
                return tuple(int(s[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
            except ValueError:
                pass
    elif isinstance(color, Sequence) and len(color) in (3, 4) and all(
            isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in color):
        return tuple(int(v) for v in color[:3])  # type: ignore[return-value]
    raise InvalidParameterError(f"colour {color!r} is not '#rrggbb' or an (r, g, b) tuple of 0-255 integers")


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*tuple(int(v) for v in rgb[:3]))


def colormap_lut(cmap: str, n: int = 256) -> np.ndarray:
    """``(n, 3) uint8`` lookup table of the built-in colormap ``cmap`` (name, ``_r`` reverses it)."""
    name, rev = (cmap[:-2], True) if cmap.endswith("_r") else (cmap, False)
    if name not in COLORMAPS:
        raise InvalidParameterError(f"unknown colormap {cmap!r}; choose one of {', '.join(sorted(COLORMAPS))} (or '<name>_r')")
    anchors = np.array([_rgb(c) for c in COLORMAPS[name]], float)
    t = np.linspace(0, 1, len(anchors))
    u = np.linspace(0, 1, n)
    lut = np.stack([np.interp(u, t, anchors[:, k]) for k in range(3)], axis=1)
    lut = np.clip(np.round(lut), 0, 255).astype(np.uint8)
    return lut[::-1].copy() if rev else lut


def category_colors(n: int) -> list[str]:
    """``n`` distinct hex colours: :data:`PALETTE` first, then golden-angle hues."""
    out = list(PALETTE[:n])
    for i in range(len(out), n):
        h = (i * 0.618033988749895) % 1.0
        out.append(_hex([round(255 * v) for v in colorsys.hsv_to_rgb(h, 0.65, 0.9)]))
    return out

