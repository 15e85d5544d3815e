"""``SyncedViewers``: one slide twice, side by side: with overlay layers, and plain. Panning or zooming
either moves the other to the same level-0 box; a tile selected in one is selected in both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets

from wsi_lab.ui.viewer import SlideViewer

__all__ = ["SyncedViewers"]

#: viewports within this fraction of their width are "the same view" (stops the echo between the two)
TOLERANCE = 0.01


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    if len(a) != 4 or len(b) != 4:
        return False
    tol = TOLERANCE * max(abs(a[2]), abs(b[2]), 1.0)
    return all(abs(p - q) <= tol for p, q in zip(a, b))


class SyncedViewers(widgets.HBox):
    """``layered`` (with the layers of :meth:`set_layers`) and ``plain`` viewers of ``path``, sharing the
    slide (opened once) and the tile ``table``."""

    def __init__(self, path: str, table: Any = None, tile_source: str = "auto", height: str = "400px") -> None:
        from wsi_lab.slide import open_slide

        self.slide = open_slide(path)
        try:
            self.layered = SlideViewer(self.slide, table=table, tile_source=tile_source, height=height)
            self.plain = SlideViewer(self.slide, table=table, tile_source=tile_source, height=height)
        except BaseException:
            self.slide.close()
            raise
        self.layered.add_class("wsi-review-layered")
        self.plain.add_class("wsi-review-plain")
        self._expected: dict[int, list[float]] = {}
        self.layered.observe(self._follow, "viewport")
        self.plain.observe(self._follow, "viewport")
        # a VBox each: the viewer takes the box's width (in a plain Box it shrank to nothing)
        super().__init__([widgets.VBox([self.layered], layout=widgets.Layout(width="50%")),
                          widgets.VBox([self.plain], layout=widgets.Layout(width="50%"))])

    def _follow(self, change: dict) -> None:
        src = change["owner"]
        dst = self.plain if src is self.layered else self.layered
        v = list(change["new"] or [])
        if len(v) != 4 or not (v[2] > 0 and v[3] > 0):
            return
        if _close(v, self._expected.pop(id(src), [])):  # the echo of a view we forwarded: stop here
            return
        if _close(v, list(dst.viewport or [])):
            return
        # a hair off what the source sent, so the other view never takes it for its own echo
        fwd = [v[0] + 0.01, v[1] + 0.01, v[2], v[3]]
        self._expected[id(dst)] = fwd
        dst.viewport = fwd

    def set_layers(self, layers: Sequence[Any]) -> None:
        """Show ``layers`` on the layered viewer (replacing its layers)."""
        self.layered.layers = []
        for layer in layers:
            self.layered.add_layer(layer)

    def select(self, x: float, y: float, zoom: bool = True) -> Any:
        """Select the tile under level-0 ``(x, y)`` in both viewers; returns its row or ``None``."""
        row = self.layered.select(x, y, zoom=zoom)
        self.plain.select(x, y, zoom=zoom)
        return row

    def close(self) -> None:
        """Close both viewers and the slide."""
        self.layered.close()
        self.plain.close()
        self.slide.close()
        super().close()
