"""The review panel's keyboard: one shortcut key to its action, and moving through a gallery (the next or
previous tile; after a decision, the gallery's next tile). Shortcuts, while a gallery has focus: ``a``
accept, ``1``–``9`` relabel as the n-th class, ``u``/``z`` undo, ``→``/``j`` next tile, ``←``/``k``
previous, ``n`` neighbours of the tile in hand. A mixin of :class:`~wsi_lab.ui.review.ReviewPanel`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import ipywidgets as widgets
    import pandas as pd

    from wsi_lab.ui.common import ErrorBox
    from wsi_lab.ui.gallery import TileGallery

__all__ = ["ReviewKeys"]


class ReviewKeys:
    """Shortcut keys and gallery steps of the review panel (the panel holds the widgets and state)."""

    errors: ErrorBox
    classes: list[str]
    label: widgets.Dropdown
    top: TileGallery
    bottom: TileGallery
    near: TileGallery
    active: str
    current: Any
    last_key_ms: float
    _gallery_rows: dict[str, pd.DataFrame]

    if TYPE_CHECKING:
        def action(self, name: str) -> None: ...
        def neighbours(self) -> None: ...
        def _pick(self, key: str, index: int) -> None: ...

    def key(self, key: str) -> None:
        """Handle one shortcut key (see the module docstring)."""
        t0 = time.perf_counter()
        with self.errors.guard("shortcut"):
            if key in ("ArrowRight", "j"):
                self.step(1)
            elif key in ("ArrowLeft", "k"):
                self.step(-1)
            elif key == "a":
                self.action("accept")
            elif key in ("u", "z"):
                self.action("undo")
            elif key == "n":
                self.neighbours()
            elif key.isdigit() and 1 <= int(key) <= len(self.classes):
                self.label.value = self.classes[int(key) - 1]
                self.action("relabel")
        self.last_key_ms = (time.perf_counter() - t0) * 1000

    def step(self, delta: int) -> None:
        """Hold the next (``delta=1``) or previous tile of the active gallery."""
        g = {"top": self.top, "bottom": self.bottom, "near": self.near}[self.active]
        rows = self._gallery_rows[self.active]
        if len(rows):
            g.index = int(np.clip(g.index + delta, 0, len(rows) - 1)) if g.index >= 0 else 0
            if self.current is None:
                self._pick(self.active, g.index)

    def _advance(self) -> bool:
        """After a decision on a gallery's tile: hold that gallery's next tile (True), else False."""
        g = {"top": self.top, "bottom": self.bottom, "near": self.near}[self.active]
        rows = self._gallery_rows[self.active]
        cur = self.current
        if cur is None or not (0 <= g.index < len(rows) - 1):
            return False
        here = rows.iloc[g.index]
        if (int(here["x"]), int(here["y"])) != (int(cur["x"]), int(cur["y"])):
            return False
        g.index += 1
        return True
