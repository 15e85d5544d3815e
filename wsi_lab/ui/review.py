"""``ReviewPanel``: a pathologist's review of a predictions table, a thin view over :mod:`wsi_lab.review`.

A queue of the slides with predictions; the chosen slide in the deep-zoom viewer with a prediction,
attention, latent, cluster or decisions layer, and the plain slide beside it, kept at the same view;
galleries of the highest- and lowest-scoring tiles and of the nearest neighbours of the tile in hand.
Decisions (accept, relabel, a drawn region, undo) go straight to a :class:`~wsi_lab.review.DecisionStore`
(Parquet + QuPath GeoJSON, written as they are made).

Shortcuts, while a gallery has focus: ``a`` accept, ``1``–``9`` relabel as the n-th class (both move on
to the gallery's next tile), ``u``/``z`` undo, ``→``/``j`` next tile, ``←``/``k`` previous, ``n``
neighbours of the tile in hand.
"""

from __future__ import annotations

import html
import logging
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import traitlets

from wsi_lab.ui.common import ErrorBox
from wsi_lab.ui.gallery import TileGallery
from wsi_lab.ui.sync import SyncedViewers

log = logging.getLogger(__name__)

__all__ = ["ReviewPanel", "LAYER_KINDS"]

LAYER_KINDS = ("pred", "heatmap", "attention", "latent", "clusters", "decisions", "none")


def _load_predictions(predictions: Any) -> pd.DataFrame:
    if isinstance(predictions, pd.DataFrame):
        return predictions
    from wsi_lab.infer import read_predictions

    return read_predictions(Path(predictions).expanduser())


def classes_of(table: pd.DataFrame) -> list[str]:
    """The classes a reviewer chooses from: the model's, then any other label already in the table."""
    from wsi_lab.infer.scores import class_names

    try:
        classes = list(class_names(table))
    except Exception:  # noqa: BLE001 - a latents-only table has no model classes; labels may still exist
        classes = []
    if "label" in table.columns:
        classes += sorted(set(table["label"].dropna().astype(str)) - set(classes))
    return classes


class ReviewPanel(widgets.VBox):
    """Review ``predictions`` (a predictions table or its Parquet path) and keep decisions in ``decisions``
    (a folder or a :class:`~wsi_lab.review.DecisionStore`) as ``reviewer``. ``n`` tiles per gallery."""

    current = traitlets.Any(None, help="the TileTable row in hand (a pandas Series) or None")

    def __init__(self, predictions: Any, decisions: Any, reviewer: str | None = None, n: int = 8,
                 tile_source: str = "auto", height: str = "380px", gallery_size: int = 80) -> None:
        from wsi_lab.review import DecisionStore

        self.errors = ErrorBox()
        self.table = _load_predictions(predictions)
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
        if "slide_id" not in self.table.columns or not len(self.table):
            return []
        out = []
        decided = self.store.effective()["slide_id"].value_counts()
        for sid, g in self.table.groupby("slide_id", sort=True):
            out.append((f"{sid} · {len(g)} tiles · {int(decided.get(str(sid), 0))} reviewed", str(sid)))
        return out

    def _kind_ok(self, kind: str) -> bool:
        cols = [str(c) for c in self.table.columns]
        return {"pred": "pred" in cols, "heatmap": any(c.startswith("prob_") for c in cols),
                "attention": "attention" in cols, "latent": any(c.startswith("z_") for c in cols),
                "clusters": any(c.startswith("z_") for c in cols), "decisions": True, "none": True}[kind]

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

    def step(self, delta: int) -> None:
        """Hold the next (``delta=1``) or previous tile of the active gallery."""
        g = {"top": self.top, "bottom": self.bottom, "near": self.near}[self.active]
        rows = self._gallery_rows[self.active]
        if len(rows):
            g.index = int(np.clip(g.index + delta, 0, len(rows) - 1)) if g.index >= 0 else 0
            if self.current is None:
                self._pick(self.active, g.index)

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

    # -- decisions -----------------------------------------------------------------------------------
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

    def close(self) -> None:
        """Close the panel and its viewers (which release their slide)."""
        if self.viewers is not None:
            self.viewers.close()
            self.viewers = None
        for g in (self.top, self.bottom, self.near):
            g.close()
        super().close()

