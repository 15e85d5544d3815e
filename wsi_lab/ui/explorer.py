"""``LatentExplorer``: a 2-D embedding (PCA, UMAP when installed) of latents or features drawn by our
Canvas-2D scatter (:class:`~wsi_lab.ui.scatter.ScatterPlot`: binary buffers, no GPU needed; or
jupyter-scatter's WebGL one with ``scatter="jupyter-scatter"``), brushed both ways with the slide: points selected in the
scatter (drag a lasso) light up as tiles on the slide and fill the gallery; a region drawn on the
slide (or the tiles in view) selects its points. Colour by any column. With ``decisions`` (a folder or
the :class:`~wsi_lab.review.DecisionStore` a :class:`~wsi_lab.ui.review.ReviewPanel` writes to) the brushed
set is accepted or relabelled in one action, one batch that one undo takes back. A thin view over
:mod:`wsi_lab.review` (``embed``, ``SlidePoints``, ``points_in_region``, ``tile_images``,
``region_layer``, ``DecisionStore``).

The selection reaches the slide as one binary buffer of float32 level-0 boxes (the viewer's ``highlight``
trait) that the browser draws over the slide itself: no overlay layer, no server-rendered tiles. A lasso in
our scatter does not wait for the kernel: the scatter holds every point's box on the slide shown and hands
the selected ones to the viewer in the page; the kernel then hears of both and fills the gallery.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
import uuid
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd

from wsi_lab.data.tile_reader import SlideCache
from wsi_lab.errors import InvalidParameterError
from wsi_lab.review import SlidePoints
from wsi_lab.review.explore import CLUSTER
from wsi_lab.ui.common import ErrorBox
from wsi_lab.ui.gallery import TileGallery
from wsi_lab.ui.scatter import JupyterScatter, ScatterPlot

log = logging.getLogger(__name__)

__all__ = ["LatentExplorer", "colour_columns"]

SCATTERS = ("canvas", "jupyter-scatter")  # our Canvas-2D scatter (default), or jupyter-scatter's WebGL one
_SKIP = {"x", "y", "level", "read_size", "tile_size", "size0", "embed_x", "embed_y", "mpp", "patient_id"}


def colour_columns(table: pd.DataFrame) -> list[str]:
    """The columns a scatter can be coloured by: categories (cluster, pred, label, slide_id, split) first,
    then numbers (probabilities, attention, recon_error); not coordinates or latents."""
    cats, nums = [], []
    for c in table.columns:
        name = str(c)
        if name in _SKIP or (name.startswith(("z_", "feat_", "f_")) and name.split("_")[-1].isdigit()):
            continue
        if pd.api.types.is_numeric_dtype(table[c]) and not isinstance(table[c].dtype, pd.CategoricalDtype):
            nums.append(name)
        elif table[c].nunique(dropna=True) <= 64:
            cats.append(name)
    first = [c for c in ("cluster", "pred", "label", "slide_id", "split") if c in cats]
    return first + [c for c in cats if c not in first] + nums


def _read(predictions: Any, columns: Any) -> pd.DataFrame:
    """The predictions table; from Parquet without the latent/feature columns that are not embedded."""
    from pathlib import Path

    from wsi_lab.ui.review import _load_predictions

    path = Path(predictions).expanduser() if isinstance(predictions, (str, Path)) else None
    if path is None or path.suffix.lower() != ".parquet" or not path.is_file():
        return _load_predictions(predictions)
    import pyarrow.parquet as pq

    from wsi_lab.data.table import read_table
    from wsi_lab.review.galleries import feature_columns

    try:
        schema = pq.read_schema(path)
    except Exception:  # noqa: BLE001 - not a readable Parquet file: the loader says so with a typed error
        return _load_predictions(predictions)
    names = [n for n in schema.names if not n.startswith("__index_level_")]
    families = [n for n in names if n.startswith(("z_", "feat_", "f_")) and n.split("_", 1)[1].isdigit()]
    try:
        keep = set(columns) if columns else set(feature_columns(pd.DataFrame(columns=families)))
    except Exception:  # noqa: BLE001 - no latents: embed() says so, with the whole table's columns
        return _load_predictions(predictions)
    return read_table(path, [n for n in names if n not in set(families) - keep])


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The kernel's event loop when code runs inside it (a cell, a button's handler), else None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LatentExplorer(widgets.VBox):
    """Explore ``predictions`` (a table with ``z_NN``/feature columns, or its Parquet path) in 2-D.
    ``method``: ``pca`` | ``umap``; ``color_by``: a column (default ``cluster``); ``n``: gallery size;
    ``decisions``: where the review decisions go (a folder or a ``DecisionStore``; none: no decision buttons);
    ``scatter``: ``canvas`` (default) | ``jupyter-scatter``. The ``cluster`` column (k-means, ``clusters``
    of them) is computed when first coloured by (jupyter-scatter: at once)."""

    def __init__(self, predictions: Any, columns: Any = None, method: str = "pca", color_by: str | None = None,
                 clusters: int = 6, n: int = 12, tile_source: str = "auto", height: int = 420,
                 decisions: Any = None, reviewer: str | None = None, scatter: str = "canvas") -> None:
        from wsi_lab.review import DecisionStore, embed
        from wsi_lab.ui.review import classes_of

        if scatter not in SCATTERS:
            raise InvalidParameterError(f"scatter must be one of {SCATTERS}, got {scatter!r}")
        self.errors = ErrorBox()
        t0 = time.perf_counter()
        # k-means only when the clusters are coloured (below: the default colour is the first other column)
        self.table = embed(_read(predictions, columns), columns, method, clusters=None)
        self._columns, self._clusters = columns, int(clusters)
        self.n = int(n)
        self.tile_source, self.height = tile_source, int(height)
        options = colour_columns(self.table)
        if self._clusters and CLUSTER not in options:
            options.insert(0, CLUSTER)  # computed on first use
        if color_by not in options:
            color_by = next((c for c in options if c != CLUSTER), options[0] if options else None)
        self._colour_source(CLUSTER if scatter == "jupyter-scatter" else color_by)  # its data: every column
        xy = self.table[["embed_x", "embed_y"]].to_numpy(np.float32)
        self.scatter: ScatterPlot | JupyterScatter
        if scatter == "canvas":
            self.scatter = ScatterPlot(xy[:, 0], xy[:, 1], height=self.height)
            if color_by:
                self.scatter.color(self.table[color_by], title=color_by)
        else:
            self.scatter = JupyterScatter(self.table, options, color_by, self.height)
        self.plot = self.scatter.widget
        self.scatter.on_select(self._on_selection)
        self.build_s = time.perf_counter() - t0
        self.color = widgets.Dropdown(options=options, value=color_by, description="Colour by",
                                      layout=widgets.Layout(width="260px"))
        self.color.add_class("wsi-explorer-color")
        self.color.observe(lambda ch: self.color_by(ch["new"]), "value")
        slides = sorted(map(str, self.table["slide_id"].unique()))
        self.slide = widgets.Dropdown(options=slides, value=slides[0] if slides else None, description="Slide",
                                      layout=widgets.Layout(width="300px"))
        self.slide.add_class("wsi-explorer-slide")
        self.slide.observe(lambda ch: self.show_slide(ch["new"]), "value")
        self.buttons = {name: widgets.Button(description=text, tooltip=tip, layout=widgets.Layout(width="auto"))
                        for name, text, tip in (
                            ("draw", "Draw region", "click the slide to add corners of a region"),
                            ("region", "Select region", "select the points of the tiles inside the drawn region"),
                            ("view", "Select tiles in view", "select the points of the tiles shown on the slide"),
                            ("clear", "Clear", "clear the selection and the drawn corners"))}
        self.store: DecisionStore | None = None
        decide: list[widgets.Widget] = []
        if decisions is not None:
            self.store = decisions if isinstance(decisions, DecisionStore) else DecisionStore(decisions, reviewer)
            classes = classes_of(self.table)
            self.label = widgets.Dropdown(options=classes or ["(none)"], description="Label",
                                          layout=widgets.Layout(width="220px"))
            self.label.add_class("wsi-explorer-label")
            for name, text, tip in (("accept", "Accept selected", "accept the model's answer for every selected tile"),
                                    ("relabel", "Relabel selected", "give every selected tile the chosen label"),
                                    ("undo", "Undo", "take back the last decision (a whole set at once)")):
                self.buttons[name] = widgets.Button(description=text, tooltip=tip, layout=widgets.Layout(width="auto"))
            decide = [self.label, self.buttons["accept"], self.buttons["relabel"], self.buttons["undo"]]
        for name, b in self.buttons.items():
            b.add_class(f"wsi-explorer-{name}")
            b.on_click(lambda _b, name=name: self.action(name))
        self.status = widgets.HTML()
        self.status.add_class("wsi-explorer-status")
        self.gallery = TileGallery("selected tiles", 72)
        self.gallery.add_class("wsi-explorer-gallery")
        self.viewer: Any = None
        self._on_slide: SlidePoints | None = None  # the shown slide's tiles among the points (their boxes)
        self._slides = SlideCache(maxsize=2)  # the gallery's slides, open while the explorer is
        self._link = uuid.uuid4().hex  # the scatter's and the viewer's in the page
        self.viewer_box = widgets.VBox(layout=widgets.Layout(width="50%"))
        self.region: list[tuple[float, float]] = []
        self.selected = np.zeros(0, np.int64)
        self._shown: np.ndarray | None = None  # the sorted points last shown on the slide and in the gallery
        self._pending: np.ndarray | None = None  # points for the scatter once the page painted the slide's boxes
        self._fallback: Any = None
        self.brush_ms = self.gallery_ms = float("nan")  # the last selection's boxes, and its gallery
        super().__init__()
        self.add_class("wsi-lab-explorer")
        plot_box = widgets.VBox([self.plot], layout=widgets.Layout(width="50%"))  # VBox: the plot takes its width
        tools = [b for k, b in self.buttons.items() if k not in ("accept", "relabel", "undo")]
        self.children = [self.errors, widgets.HBox([self.color, self.slide, *tools],
                                                   layout=widgets.Layout(flex_flow="row wrap")),
                         *([widgets.HBox(decide)] if decide else []), self.status, widgets.HBox([plot_box, self.viewer_box]), self.gallery]
        if slides:
            self.show_slide(slides[0])
        self._update_status()

    # -- the slide -----------------------------------------------------------------------------------
    def show_slide(self, slide_id: str | None) -> None:
        """Show ``slide_id`` beside the scatter, with the selection's tiles on it."""
        with self.errors.guard("explorer"):
            if not slide_id:
                return
            from wsi_lab.data.tile_reader import slide_paths_of
            from wsi_lab.ui.viewer import SlideViewer

            self._on_slide = SlidePoints(self.table, str(slide_id))
            rows = self.table[self._on_slide.on]
            if self.viewer is not None:
                self.viewer.close()
            self.viewer = SlideViewer(slide_paths_of(rows)[str(slide_id)], table=rows, tile_source=self.tile_source,
                                      height=f"{self.height}px")
            self.viewer.add_class("wsi-explorer-viewer")
            if isinstance(self.scatter, ScatterPlot):  # a lasso draws the tiles on this slide in the page at once
                self.viewer.link = self._link
                self.scatter.link_boxes(self._link, self._on_slide.boxes)
            self.viewer.on_tile_click(self._on_click)
            self.viewer.observe(self._on_painted, "highlight_painted")
            self.viewer_box.children = [self.viewer]
            self.region = []
            self._show_selection()

    def _show_region(self) -> None:
        """The region being drawn, as a layer on the slide (updated on every corner)."""
        from wsi_lab.review.layers import REGION_NAME, region_layer

        if self.viewer is None:
            return
        self.viewer.layers = [e for e in self.viewer.layers if e["name"] != REGION_NAME]
        if self.region:
            self.viewer.add_layer(region_layer(self.region, self.viewer.slide.dimensions))

    def _on_click(self, x: int, y: int, row: Any) -> None:
        with self.errors.guard("click"):
            if self.buttons["draw"].button_style == "warning":
                self.region.append((float(x), float(y)))
                self._show_region()
            elif row is not None:
                self.select([int(row.name)])
            self._update_status()

    # -- brushing ------------------------------------------------------------------------------------
    def _on_selection(self, points: np.ndarray) -> None:
        sel = np.asarray(points, np.int64)
        if self._shown is not None and np.array_equal(np.sort(sel), self._shown):
            return  # select() showed these points already
        self._cancel_pending()  # a lasso in the page wins over a selection still waiting for the slide
        self.selected = sel
        with self.errors.guard("selection"):
            self._show_selection()

    def select(self, points: Any) -> None:
        """Select ``points`` (0-based rows of :attr:`table`) in the scatter; the slide and gallery follow."""
        pts = np.asarray(points, np.int64).ravel()
        self._cancel_pending()
        self.selected = pts
        sent = False
        with self.errors.guard("selection"):
            sent = self._show_selection()
        # the slide first: the scatter's selection goes out once the page has painted the slide's boxes (its
        # redraw of the points can hold a frame for a long time: software WebGL), or after a second at most
        loop = _running_loop() if sent else None
        if loop is None:
            self.scatter.select(pts)
            return
        self._pending = pts
        self._fallback = loop.call_later(1.0, self._flush_pending)

    def _on_painted(self, _change: dict) -> None:
        self._flush_pending()

    def _flush_pending(self) -> None:
        pts = self._pending
        self._cancel_pending()
        if pts is not None:
            self.scatter.select(pts)

    def _cancel_pending(self) -> None:
        self._pending = None
        if self._fallback is not None:
            self._fallback.cancel()
            self._fallback = None

    def _show_selection(self) -> bool:
        """Selected points → their tiles highlighted on the slide shown, and the gallery. True when new boxes
        went to a viewer shown in a page (it will report them painted)."""
        from wsi_lab.review import tile_images

        t0 = time.perf_counter()
        if self.viewer is None or self._on_slide is None:
            return False
        before = self.viewer.highlight
        on = self._on_slide.positions(self.selected)
        # one float32 buffer of level-0 boxes that the browser draws (unchanged boxes send nothing)
        self.viewer.highlight = self._on_slide.boxes_of(on).tobytes()
        sent = self.viewer.highlight != before and bool(self.viewer.active_source)
        self._shown = np.sort(self.selected)
        self.brush_ms = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        shown = self.table.iloc[on[:self.n]]
        self.gallery.set_tiles(tile_images(shown, 72, cache=self._slides) if len(shown) else [],
                               [f"{s} {int(x)},{int(y)}" for s, x, y in zip(shown["slide_id"], shown["x"], shown["y"])])
        self.gallery.title = f"selected tiles on {self.slide.value}: {len(on)} (first {len(shown)} shown)"
        self.gallery_ms = (time.perf_counter() - t1) * 1000
        self._update_status()
        return sent

    def color_by(self, column: str) -> None:
        """Colour the points by ``column``."""
        with self.errors.guard("colour"):
            self._colour_source(column)
            if isinstance(self.scatter, ScatterPlot):
                self.scatter.color(self.table[column], title=column)
            else:
                self.scatter.color(column)
            if self.color.value != column:
                self.color.value = column

    def _colour_source(self, column: str | None) -> None:
        """Compute the ``cluster`` column (k-means of the embedded columns) the first time it is coloured."""
        if column == CLUSTER and CLUSTER not in self.table.columns:
            from wsi_lab.review import cluster_labels

            self.table[CLUSTER] = cluster_labels(self.table, self._columns, self._clusters)

    def decide(self, action: str) -> int | None:
        """``accept`` or ``relabel`` (as the chosen label) every selected tile, of every slide, as one batch
        of the decision store; ``undo`` takes back the last batch. Returns the batch id."""
        if self.store is None:
            raise ValueError("no decision store: open the explorer with decisions=<folder> to accept or relabel")
        if action == "undo":
            return self.store.undo()
        if not len(self.selected):
            raise ValueError("nothing selected: drag a lasso over the points or select a region of the slide")
        rows = self.table.iloc[np.sort(self.selected)]
        if action == "accept":
            return self.store.accept(rows, source="set")
        return self.store.relabel(rows, str(self.label.value), source="set")

    def action(self, name: str) -> None:
        """A button's action: ``draw``, ``region``, ``view``, ``clear``, ``accept``, ``relabel``, ``undo``."""
        from wsi_lab.review import points_in_region

        with self.errors.guard(name):
            if name in ("accept", "relabel", "undo"):
                self.decide(name)
            elif name == "draw":
                drawing = self.buttons["draw"].button_style != "warning"
                self.buttons["draw"].button_style = "warning" if drawing else ""
                if drawing:
                    self.region = []
                    self._show_region()
            elif name == "region":
                if len(self.region) < 3:
                    raise ValueError("draw a region first: press 'Draw region' and click at least three corners")
                self.select(points_in_region(self.table, self.region, str(self.slide.value)))
                self.buttons["draw"].button_style = ""
            elif name == "view":
                if self.viewer is None or len(self.viewer.viewport or []) != 4:
                    raise ValueError("the slide has not been shown yet")
                self.select(points_in_region(self.table, list(self.viewer.viewport), str(self.slide.value)))
            elif name == "clear":
                self.region = []
                self._show_region()
                self._cancel_pending()
                self.scatter.select(None)
            self._update_status()

    def _update_status(self) -> None:
        drawing = f" · drawing: {len(self.region)} corner(s)" if self.buttons["draw"].button_style else ""
        decided = (f" · <span class='wsi-explorer-decided'>{len(self.store)}</span> tile(s) reviewed"
                   if self.store is not None else "")
        self.status.value = (f"<span class='wsi-explorer-count'>{len(self.selected)}</span> of {len(self.table)} "
                             f"points selected · slide <code>{html.escape(str(self.slide.value))}</code>{drawing}{decided}")

    def close(self) -> None:
        """Close the explorer, its scatter and its viewer (which releases the slide); also of one whose
        construction failed part way (the widget's finaliser calls this)."""
        if getattr(self, "_fallback", None) is not None:
            self._cancel_pending()
        for name in ("viewer", "plot", "gallery", "_slides"):
            part = getattr(self, name, None)
            if part is not None:
                part.close()
        self.viewer = None
        super().close()

