"""``Lab``: the workshop dashboard, one tab per registered panel, all sharing one :class:`LabState`.

``wsi_lab.Lab("path/to/slides")`` is the one line a workshop starts with. Tabs are built from a panel
registry, so later panels (training, review) plug in with :func:`register_panel`::

    def my_panel(lab: Lab) -> ipywidgets.Widget: ...
    register_panel("Review", my_panel, order=60)

A factory gets the :class:`Lab`; it reads and writes the shared state in ``lab.state`` (selection,
current slide, tissue mask, planned tiles, tiling parameters, tiling result) and never holds
pipeline logic of its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets
import traitlets

from wsi_lab.ui.common import ErrorBox, message_html

log = logging.getLogger(__name__)

PanelFactory = Callable[["Lab"], widgets.Widget]


@dataclass(frozen=True)
class PanelSpec:
    name: str
    factory: PanelFactory
    order: int


_REGISTRY: dict[str, PanelSpec] = {}


def register_panel(name: str, factory: PanelFactory, order: int = 100) -> None:
    """Add (or replace) a Lab tab called ``name``; tabs are ordered by ``order`` then name.
    ``factory(lab)`` returns the tab's widget; it is called once per :class:`Lab`."""
    if not name or not callable(factory):
        raise ValueError(f"register_panel needs a name and a callable factory, got {name!r}, {factory!r}")
    _REGISTRY[name] = PanelSpec(name, factory, int(order))


def unregister_panel(name: str) -> None:
    """Remove a tab from the registry (no error when absent)."""
    _REGISTRY.pop(name, None)


def registered_panels() -> list[PanelSpec]:
    """The registered panels in tab order."""
    return sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name))


class LabState(traitlets.HasTraits):
    """What the Lab's panels share. ``current`` follows the first selected slide."""

    root = traitlets.Unicode()
    selected = traitlets.List(traitlets.Unicode())
    current = traitlets.Unicode(allow_none=True, default_value=None)
    mask = traitlets.Any(None, help="TissueMask of the current slide (from the tuner)")
    planned = traitlets.Any(None, help="TileTable the tuner's parameters would keep on the current slide")
    params = traitlets.Any(None, help="TilingParams from the tuner (with per-slide overrides)")
    result = traitlets.Any(None, help="TilingResult of the last tiling run")
    tiles = traitlets.Any(None, help="TileTable of the last tiling run (all slides)")
    overrides = traitlets.Dict(help="slide_id -> TilingParams tuned for that slide")

    @traitlets.observe("selected")
    def _follow_selection(self, change) -> None:
        new = list(change["new"])
        if not new:
            self.current = None
        elif self.current not in new:
            self.current = new[0]


class Lab(widgets.VBox):
    """The WSI Lab dashboard for the slides under ``root``: one tab per registered panel.

    ``lab.state`` is the shared :class:`LabState`; ``lab.panels`` maps tab name to its widget.
    """

    def __init__(self, root: str | os.PathLike | None = None, select: str | os.PathLike | None = None,
                 **kwargs) -> None:
        self.state = LabState(root=str(Path(root).expanduser()) if root is not None else default_slide_root())
        self.errors = ErrorBox()
        self.panels: dict[str, widgets.Widget] = {}
        self.tabs = widgets.Tab()
        header = widgets.HTML(f"<b>WSI Lab</b> &middot; slides in <code>{self.state.root}</code>")
        for spec in registered_panels():
            self.panels[spec.name] = self._build(spec)
        self.tabs.children = list(self.panels.values())
        self.tabs.titles = tuple(self.panels)
        super().__init__([header, self.errors, self.tabs], **kwargs)
        self.add_class("wsi-lab-lab")
        if select is not None:
            self.state.selected = [str(select)]
        elif not self.state.selected:
            browser = self.panels.get("Slides")
            paths = list(getattr(browser, "table", {}).get("path", [])) if browser is not None else []
            if paths:
                self.state.selected = [paths[0]]

    def _build(self, spec: PanelSpec) -> widgets.Widget:
        try:
            w = spec.factory(self)
        except Exception as exc:  # noqa: BLE001 - one broken panel must not take the Lab down
            log.info("Lab panel %s failed to build: %s", spec.name, exc)
            log.debug("Lab panel %s failed to build", spec.name, exc_info=True)
            box = ErrorBox()
            box.show(exc)
            return widgets.VBox([box])
        return w

    def close(self) -> None:
        """Close the Lab and every panel (open slides are released, a tiling run is cancelled)."""
        for w in getattr(self, "panels", {}).values():
            w.close()
        super().close()

    def show_tab(self, name: str) -> None:
        """Switch to the tab called ``name``."""
        self.tabs.selected_index = list(self.panels).index(name)


def default_slide_root() -> str:
    """Where slides are looked for when none is given: :func:`wsi_lab.demo.demo_slides_dir`
    (``$WSI_LAB_SLIDES``, ``../shared/data/slides``, ``~/.cache/wsi-lab/slides``), else ``./data``."""
    from wsi_lab.demo import demo_slides_dir
    from wsi_lab.errors import SlideNotFoundError

    try:
        return str(demo_slides_dir())
    except SlideNotFoundError:
        return "data"


# -- built-in panels -----------------------------------------------------------------------------

def _slides_panel(lab: Lab) -> widgets.Widget:
    from wsi_lab.ui.browser import SlideBrowser

    browser = SlideBrowser(lab.state.root)
    traitlets.link((browser, "selected"), (lab.state, "selected"))
    return browser


class ViewerPanel(widgets.VBox):
    """The deep-zoom viewer of the Lab's current slide with its layers: tissue mask, planned tile grid,
    and the tissue-fraction heatmap once the slide is tiled."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self.errors = ErrorBox()
        self.title = widgets.HTML()
        self.viewer = None
        super().__init__([self.title, self.errors])
        for name in ("current", "mask", "planned", "tiles"):
            state.observe(self._refresh, name)
        self._refresh()

    def layers(self) -> list:
        """Overlay layers for the current slide (mask, tile grid, tissue_fraction heatmap)."""
        from wsi_lab import overlays

        st, out = self.state, []
        if st.mask is not None:
            out.append(overlays.mask_layer(st.mask))
        tiles = self._table()
        if tiles is not None and tiles is not st.planned and len(tiles):
            out.append(overlays.heatmap_layer(tiles, "tissue_fraction"))
            return out
        if st.planned is not None and len(st.planned):
            out.append(overlays.grid_layer(st.planned))
        return out

    def _refresh(self, _change=None) -> None:
        st = self.state
        with self.errors.guard("viewer"):
            if not st.current:
                self.title.value = message_html("Select a slide in the Slides tab.", "info")
                self.children = [self.title, self.errors]
                self._drop_viewer()
                return
            from wsi_lab.ui.viewer import SlideViewer

            self.title.value = f"<b>{Path(st.current).name}</b>"
            layers = self.layers()
            if self.viewer is None or str(self.viewer.slide.path) != str(st.current):
                self._drop_viewer()  # releases the previous slide
                self.viewer = SlideViewer(st.current, layers=layers, table=self._table())
                self.viewer.add_class("wsi-lab-lab-viewer")
            else:
                self.viewer.table = self._table()
                self.viewer.layers = []
                for layer in layers:
                    self.viewer.add_layer(layer)
            self.children = [self.title, self.errors, self.viewer]

    def close(self) -> None:
        """Close the panel and its viewer (which releases the slide it opened). Safe to call twice."""
        if not getattr(self, "_closed", False):
            self._closed = True
            for name in ("current", "mask", "planned", "tiles"):
                self.state.unobserve(self._refresh, name)
        self._drop_viewer()
        super().close()

    def _drop_viewer(self) -> None:
        if self.viewer is not None:
            old, self.viewer = self.viewer, None
            old.close()

    def _table(self):
        """The tiles a click on the viewer reports: this slide's tiled rows, else the planned ones."""
        st = self.state
        if st.tiles is not None and len(st.tiles) and st.current:
            mine = st.tiles[st.tiles["slide_id"] == _slide_id(st.current)]
            if len(mine):
                return mine.reset_index(drop=True)
        return st.planned


def _slide_id(path: str) -> str:
    from wsi_lab.slide import slide_id

    return slide_id(path)


def _viewer_panel(lab: Lab) -> widgets.Widget:
    return ViewerPanel(lab.state)


class TunerPanel(widgets.VBox):
    """A :class:`~wsi_lab.ui.tuner.ThresholdTuner` on the Lab's current slide. Its mask, planned tiles and
    parameters go to the shared state; the control values carry over when another slide is chosen, and
    "Use for this slide only" records a per-slide override."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self.errors = ErrorBox()
        self.tuner = None
        self.override = widgets.Button(description="Use for this slide only", icon="thumb-tack",
                                       layout=widgets.Layout(width="220px"))
        self.override.on_click(self._save_override)
        self.note = widgets.HTML()
        super().__init__([self.errors])
        state.observe(self._load, "current")
        self._load()

    def _load(self, _change=None) -> None:
        from wsi_lab.ui.tuner import ThresholdTuner

        old = self.tuner
        self.tuner = None
        with self.errors.guard("tuner"):
            if not self.state.current:
                self.children = [widgets.HTML(message_html("Select a slide in the Slides tab.", "info"))]
                return
            tuner = ThresholdTuner(self.state.current)
            if old is not None:
                tuner.apply_settings(old.settings())
            self.tuner = tuner
            for name in ("mask", "planned"):
                tuner.observe(self._publish, name)
            self._publish()
        if old is not None:
            old.close()
        kids = [self.errors] + ([self.tuner, widgets.HBox([self.override, self.note])] if self.tuner else [])
        self.children = kids

    def close(self) -> None:
        """Close the panel and its tuner (which releases the slide it opened). Safe to call twice."""
        if not getattr(self, "_closed", False):
            self._closed = True
            self.state.unobserve(self._load, "current")
        if self.tuner is not None:
            self.tuner.close()
            self.tuner = None
        super().close()

    def _publish(self, _change=None) -> None:
        t = self.tuner
        with self.errors.guard("tuner"):
            with self.state.hold_trait_notifications():
                self.state.mask, self.state.planned = t.mask, t.planned
                self.state.params = t.params

    def _save_override(self, _button=None) -> None:
        if self.tuner is None:
            return
        with self.errors.guard("override"):
            self.state.overrides = {**self.state.overrides, self.tuner.slide.slide_id: self.tuner.params}
            self.note.value = f"{len(self.state.overrides)} slide override(s): {', '.join(self.state.overrides)}"


def _tune_panel(lab: Lab) -> widgets.Widget:
    return TunerPanel(lab.state)


def _tiling_panel(lab: Lab) -> widgets.Widget:
    from wsi_lab.ui.tiling_panel import TilingPanel

    st = lab.state
    panel = TilingPanel(slides=lambda: st.selected, params=lambda: st.params, overrides=lambda: st.overrides)
    panel.observe(lambda change: setattr(st, "tiles", change["new"]), "table")
    return panel


register_panel("Slides", _slides_panel, order=10)
register_panel("Viewer", _viewer_panel, order=20)
register_panel("Tune", _tune_panel, order=30)
register_panel("Tiling", _tiling_panel, order=40)
