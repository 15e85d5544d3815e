"""``ReviewPanel``: a pathologist's review of a predictions table, a thin view over :mod:`wsi_lab.review`.

A queue of the slides with predictions; the chosen slide in the deep-zoom viewer with a prediction,
attention, latent, cluster or decisions layer, and the plain slide beside it, kept at the same view;
galleries of the highest- and lowest-scoring tiles and of the nearest neighbours of the tile in hand.
Decisions (accept, relabel, a drawn region, undo) go straight to a :class:`~wsi_lab.review.DecisionStore`
(Parquet + QuPath GeoJSON, written as they are made).

Shortcuts, while a gallery has focus: ``a`` accept, ``1``–``9`` relabel as the n-th class (both move on
to the gallery's next tile), ``u``/``z`` undo, ``→``/``j`` next tile, ``←``/``k`` previous, ``n``
neighbours of the tile in hand.

One job per module: the queue's data (:mod:`~wsi_lab.ui.review_queue`), the keyboard
(:mod:`~wsi_lab.ui.review_keys`), the decisions and status line (:mod:`~wsi_lab.ui.review_decisions`);
this module builds the panel and shows the slide, its layers, the galleries and the tile in hand.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import traitlets

from wsi_lab.ui.common import ErrorBox
from wsi_lab.ui.gallery import TileGallery
from wsi_lab.ui.review_decisions import ReviewDecisions
from wsi_lab.ui.review_keys import ReviewKeys
from wsi_lab.ui.review_queue import LAYER_KINDS, classes_of, kind_ok, load_predictions, queue_options
from wsi_lab.ui.sync import SyncedViewers

log = logging.getLogger(__name__)

__all__ = ["ReviewPanel", "LAYER_KINDS", "classes_of"]

_load_predictions = load_predictions  # the explorer's name for it


class ReviewPanel(ReviewKeys, ReviewDecisions, widgets.VBox):
    """Review ``predictions`` (a predictions table or its Parquet path) and keep decisions in ``decisions``
    (a folder or a :class:`~wsi_lab.review.DecisionStore`) as ``reviewer``. ``n`` tiles per gallery."""

    current = traitlets.Any(None, help="the TileTable row in hand (a pandas Series) or None")

    def __init__(self, predictions: Any, decisions: Any, reviewer: str | None = None, n: int = 8,
                 tile_source: str = "auto", height: str = "380px", gallery_size: int = 80) -> None:
        from wsi_lab.review import DecisionStore

        self.errors = ErrorBox()
        self.table = load_predictions(predictions)
        self.store = decisions if isinstance(decisions, DecisionStore) else DecisionStore(decisions, reviewer)
        self.classes = classes_of(self.table)
        self.n, self.tile_source, self.height, self.gallery_size = int(n), tile_source, height, int(gallery_size)
        self.rows = self.table.iloc[:0]
        self.viewers: SyncedViewers | None = None
        self.region: list[tuple[float, float]] = []
        self.last_key_ms = float("nan")
        self.queue = widgets.Select(options=self._queue_options(), rows=6, description="Slides",
                                    layout=widgets.Layout(width="330px"))
        self.queue.add_class("wsi-review-queue")
        kinds = [k for k in LAYER_KINDS if self._kind_ok(k)]
        self.layer_kind = widgets.Dropdown(options=kinds, value=kinds[0], description="Layer",
                                           layout=widgets.Layout(width="220px"))
        self.layer_kind.add_class("wsi-review-layer")
        self.label = widgets.Dropdown(options=self.classes or ["(none)"], description="Label",
                                      layout=widgets.Layout(width="220px"))
        self.label.add_class("wsi-review-label")
        self.buttons = {name: widgets.Button(description=text, tooltip=tip, layout=widgets.Layout(width="auto"))
                        for name, text, tip in (
                            ("accept", "Accept (a)", "accept the model's answer for the tile in hand"),
                            ("relabel", "Relabel (1-9)", "give the tile in hand the chosen label"),
                            ("undo", "Undo (u)", "take back the last decision"),
                            ("draw", "Draw region", "click the slide to add corners of a region"),
                            ("region", "Relabel region", "give every tile inside the drawn region the chosen label"),
                            ("clear", "Clear region", "forget the drawn corners"))}
        for name, b in self.buttons.items():
            b.add_class(f"wsi-review-{name}")
            b.on_click(lambda _b, name=name: self.action(name))
        self.buttons["draw"].button_style = ""
        self.info = widgets.HTML()
        self.info.add_class("wsi-review-info")
        self.status = widgets.HTML()
        self.status.add_class("wsi-review-status")
        self.top = TileGallery("highest", gallery_size)
        self.bottom = TileGallery("lowest", gallery_size)
        self.near = TileGallery("nearest neighbours", gallery_size)
        self._gallery_rows: dict[str, pd.DataFrame] = {"top": self.rows, "bottom": self.rows, "near": self.rows}
        self.active = "top"
        for key, g in (("top", self.top), ("bottom", self.bottom), ("near", self.near)):
            g.add_class(f"wsi-review-gallery-{key}")
            g.on_key(self.key)
            g.observe(lambda ch, key=key: self._pick(key, ch["new"]), "index")
        self.view_box = widgets.VBox()  # a VBox: the viewer pair takes the full width
        self._index: Any = None
        super().__init__()
        self.add_class("wsi-lab-review")
        self._shown: str | None = None
        self._queue_busy = False
        self.queue.observe(self._on_queue, "value")
        self.layer_kind.observe(lambda _ch: self._refresh_layers(), "value")
        controls = widgets.HBox([self.layer_kind, self.label, *self.buttons.values()],
                                layout=widgets.Layout(flex_flow="row wrap"))
        self.children = [self.errors, widgets.HBox([self.queue, self.info]), controls, self.status, self.view_box,
                         self.top, self.bottom, self.near]
        if self.queue.options:
            self.show_slide(self.queue.options[0][1])
        self._update_status()

    # -- slides --------------------------------------------------------------------------------------
    def _queue_options(self) -> list[tuple[str, str]]:
        return queue_options(self.table, self.store)

    def _kind_ok(self, kind: str) -> bool:
        return kind_ok(self.table, kind)

    def _on_queue(self, change: dict) -> None:
        if not self._queue_busy and change["new"] and change["new"] != self._shown:
            self.show_slide(change["new"])

    def show_slide(self, slide_id: str | None) -> None:
        """Show ``slide_id``'s tiles: the viewer pair and the galleries."""
        with self.errors.guard("review"):
            if not slide_id:
                return
            self._shown = str(slide_id)
            from wsi_lab.data.tile_reader import slide_paths_of

            rows = self.table[self.table["slide_id"].astype(str) == str(slide_id)].reset_index(drop=True)
            rows.attrs = self.table.attrs
            self.rows = rows
            self._index = None
            path = slide_paths_of(rows)[str(slide_id)]
            if self.viewers is not None:
                self.viewers.close()
            self.viewers = SyncedViewers(path, table=rows, tile_source=self.tile_source, height=self.height)
            self.viewers.layered.on_tile_click(self._on_click)
            self.viewers.plain.on_tile_click(self._on_click)
            self.view_box.children = [self.viewers]
            if self.queue.value != slide_id:
                self.queue.value = slide_id
            self._refresh_layers()
            self._fill_galleries()
            self.current = None
            self.region = []
            self._show_region()

    def _layer(self, kind: str):
        from wsi_lab.overlays.predictions import layer_for
        from wsi_lab.review.layers import decisions_layer

        if kind == "none":
            return None
        if kind == "decisions":
            return decisions_layer(self.store, str(self.queue.value), self.classes)
        return layer_for(self.rows, kind, k=min(6, max(1, len(self.rows))))

    def _refresh_layers(self) -> None:
        with self.errors.guard("layer"):
            if self.viewers is None:
                return
            layer = self._layer(self.layer_kind.value)
            self.viewers.set_layers([layer] if layer is not None else [])
            self._show_region()

    def _show_region(self) -> None:
        """The region being drawn, as a layer on both viewers (updated on every corner, gone when cleared)."""
        from wsi_lab.review.layers import REGION_NAME, region_layer

        if self.viewers is None:
            return
        for v in (self.viewers.layered, self.viewers.plain):
            v.layers = [e for e in v.layers if e["name"] != REGION_NAME]
            if self.region:
                v.add_layer(region_layer(self.region, self.viewers.slide.dimensions))

    def _fill_galleries(self) -> None:
        from wsi_lab.review import score_column, top_tiles

        try:
            col = score_column(self.rows)
        except Exception:  # noqa: BLE001 - a table without scores still gets its neighbour gallery
            col = None
        if col is not None:
            self._set_gallery("top", top_tiles(self.rows, col, self.n), f"highest {col}", col)
            self._set_gallery("bottom", top_tiles(self.rows, col, self.n, lowest=True), f"lowest {col}", col)

    def _set_gallery(self, key: str, rows: pd.DataFrame, title: str, col: str | None = None) -> None:
        from wsi_lab.review import tile_images

        g = {"top": self.top, "bottom": self.bottom, "near": self.near}[key]
        pics = tile_images(rows, self.gallery_size)
        caps = []
        for r in rows.itertuples():
            bits = [str(getattr(r, "pred", ""))]
            if col:
                bits.append(f"{getattr(r, col):.2f}")
            if "distance" in rows.columns:
                bits.append(f"d={r.distance:.2f}")
            caps.append(" ".join(b for b in bits if b))
        self._gallery_rows[key] = rows
        g.title = title
        g.set_tiles(pics, caps)
        self._mark(key)

    def _mark(self, key: str) -> None:
        rows = self._gallery_rows[key]
        eff = self.store.effective(str(self.queue.value))
        done = set(zip(eff["x"].astype(int), eff["y"].astype(int)))
        g = {"top": self.top, "bottom": self.bottom, "near": self.near}[key]
        g.marked = [i for i, (x, y) in enumerate(zip(rows["x"].astype(int), rows["y"].astype(int))) if (x, y) in done]

    # -- the tile in hand ----------------------------------------------------------------------------
    def _pick(self, key: str, index: int) -> None:
        rows = self._gallery_rows[key]
        if 0 <= index < len(rows):
            self.active = key
            self.hold(rows.iloc[index])

    def hold(self, row: pd.Series | None, zoom: bool = True) -> None:
        """Make ``row`` the tile in hand: selected (and, with ``zoom``, shown) in both viewers."""
        self.current = row
        if row is None or self.viewers is None:
            self.info.value = ""
            return
        self.viewers.select(float(row["x"]) + 1, float(row["y"]) + 1, zoom=zoom)
        bits = [f"<b>tile</b> x={int(row['x'])} y={int(row['y'])}"]
        for c in ("pred", "label", *[c for c in row.index if str(c).startswith("prob_")], "attention", "recon_error"):
            if c in row.index and pd.notna(row[c]):
                v = row[c]
                bits.append(f"{html.escape(str(c))}={v:.3f}" if isinstance(v, (float, np.floating)) else
                            f"{html.escape(str(c))}={html.escape(str(v))}")
        eff = self.store.effective(str(row["slide_id"]))
        mine = eff[(eff["x"] == int(row["x"])) & (eff["y"] == int(row["y"]))]
        if len(mine):
            d = mine.iloc[-1]
            bits.append(f"<b>reviewed</b>: {html.escape(str(d['label']))} ({d['action']} by {html.escape(str(d['reviewer']))})")
        self.info.value = "<br>".join(bits)

    def _on_click(self, x: int, y: int, row: Any) -> None:
        with self.errors.guard("click"):
            if self.buttons["draw"].button_style == "warning":  # drawing a region: the click is a corner
                self.region.append((float(x), float(y)))
                self._show_region()
                self._update_status()
                return
            if row is not None:
                self.hold(row, zoom=False)
                self.neighbours()

    def neighbours(self) -> None:
        """Fill the neighbours gallery with the tiles nearest to the one in hand (latents or features)."""
        from wsi_lab.review import NeighbourIndex, feature_columns

        if self.current is None:
            return
        try:
            feature_columns(self.rows)
        except Exception:  # noqa: BLE001 - no latent/feature columns: no neighbour gallery for this table
            return
        if self._index is None:
            self._index = NeighbourIndex(self.rows)
        pos = np.flatnonzero((self.rows["x"].to_numpy() == self.current["x"]) & (self.rows["y"].to_numpy() == self.current["y"]))
        if len(pos):
            self._set_gallery("near", self._index.query(int(pos[0]), self.n), f"nearest to x={int(self.current['x'])} "
                              f"y={int(self.current['y'])} ({self._index.backend})")

    def close(self) -> None:
        """Close the panel and its viewers (which release their slide)."""
        if self.viewers is not None:
            self.viewers.close()
            self.viewers = None
        for g in (self.top, self.bottom, self.near):
            g.close()
        super().close()

