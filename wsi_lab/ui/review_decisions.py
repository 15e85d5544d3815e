"""The review panel's decisions: each button's action (accept or relabel the tile in hand, a drawn region,
undo) written straight to the :class:`~wsi_lab.review.DecisionStore`, then the galleries' marks, the
decisions layer, the queue's counts and the status line brought up to date. A mixin of
:class:`~wsi_lab.ui.review.ReviewPanel`."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ipywidgets as widgets
    import pandas as pd

    from wsi_lab.review import DecisionStore
    from wsi_lab.ui.common import ErrorBox

__all__ = ["ReviewDecisions"]


class ReviewDecisions:
    """Decision actions and the status line of the review panel (the panel holds the widgets and state)."""

    errors: ErrorBox
    store: DecisionStore
    rows: pd.DataFrame
    region: list[tuple[float, float]]
    current: Any
    buttons: dict[str, widgets.Button]
    label: widgets.Dropdown
    queue: widgets.Select
    layer_kind: widgets.Dropdown
    status: widgets.HTML
    _gallery_rows: dict[str, pd.DataFrame]
    _queue_busy: bool

    if TYPE_CHECKING:
        def hold(self, row: pd.Series | None, zoom: bool = True) -> None: ...
        def _advance(self) -> bool: ...
        def _mark(self, key: str) -> None: ...
        def _refresh_layers(self) -> None: ...
        def _show_region(self) -> None: ...
        def _queue_options(self) -> list[tuple[str, str]]: ...

    def action(self, name: str) -> None:
        """Run a button's action: ``accept``, ``relabel``, ``undo``, ``draw``, ``region``, ``clear``."""
        with self.errors.guard(name):
            if name == "draw":
                drawing = self.buttons["draw"].button_style != "warning"
                self.buttons["draw"].button_style = "warning" if drawing else ""
                self.region = [] if drawing else self.region
                self._show_region()
            elif name == "clear":
                self.region = []
                self._show_region()
            elif name == "undo":
                self.store.undo()
            elif name == "region":
                if len(self.region) < 3:
                    raise ValueError("draw a region first: press 'Draw region' and click at least three corners")
                self.store.decide_region(self.rows, self.region, str(self.label.value), slide_id=str(self.queue.value))
                self.region = []
                self.buttons["draw"].button_style = ""
                self._show_region()
            elif name in ("accept", "relabel"):
                if self.current is None:
                    raise ValueError("no tile in hand: click one on the slide or in a gallery")
                rows = self.rows.loc[[self.current.name]] if self.current.name in self.rows.index else self.current
                if name == "accept":
                    self.store.accept(rows)
                else:
                    self.store.relabel(rows, str(self.label.value))
                self._after_decision(name)
                if not self._advance():
                    self.hold(self.current, zoom=False)
                return
            self._after_decision(name)

    def _after_decision(self, name: str) -> None:
        if name in ("accept", "relabel", "undo", "region"):
            for key in self._gallery_rows:
                self._mark(key)
            if self.layer_kind.value == "decisions":
                self._refresh_layers()
            value = self.queue.value
            self._queue_busy = True  # new counts in the labels; the slide shown stays
            try:
                self.queue.options = self._queue_options()
                self.queue.value = value
            finally:
                self._queue_busy = False
        self._update_status()

    def _update_status(self) -> None:
        eff = self.store.effective()
        sid = str(self.queue.value) if self.queue.value else None
        gj = self.store.geojson_path(sid) if sid else None
        drawing = f" · drawing a region: {len(self.region)} corner(s)" if self.buttons["draw"].button_style else ""
        self.status.value = (f"<span class='wsi-review-count'>{len(eff)}</span> decision(s) by "
                             f"{html.escape(self.store.reviewer)} in <code>{html.escape(str(self.store.path))}</code>"
                             + (f" · GeoJSON <code>{html.escape(gj.name)}</code>" if gj is not None and gj.exists() else "")
                             + drawing)
