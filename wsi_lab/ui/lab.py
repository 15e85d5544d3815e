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
from typing import TYPE_CHECKING

import ipywidgets as widgets
import traitlets

from wsi_lab.ui.common import ErrorBox, message_html

if TYPE_CHECKING:
    from wsi_lab.overlays import Layer
    from wsi_lab.ui.tuner import ThresholdTuner
    from wsi_lab.ui.viewer import SlideViewer

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
    """What the Lab's panels share. ``current`` is the slide being looked at (Viewer, Tune); ``selected``
    the slides to tile. They are separate: looking at a slide does not select it, and selecting does not
    move the view (only when nothing is current does the first selected slide become current)."""

    root = traitlets.Unicode()
    selected = traitlets.List(traitlets.Unicode())
    current = traitlets.Unicode(allow_none=True, default_value=None)
    slides = traitlets.List(traitlets.Unicode(), help="paths of the readable slides (for the slide pickers)")
    mask = traitlets.Any(None, help="TissueMask of the current slide (from the tuner)")
    planned = traitlets.Any(None, help="TileTable the tuner's parameters would keep on the current slide")
    params = traitlets.Any(None, help="TilingParams from the tuner (with per-slide overrides)")
    result = traitlets.Any(None, help="TilingResult of the last tiling run")
    tiles = traitlets.Any(None, help="TileTable of the last tiling run (all slides)")
    overrides = traitlets.Dict(help="slide_id -> TilingParams tuned for that slide")

    @traitlets.observe("selected")
    def _follow_selection(self, change) -> None:
        new = list(change["new"])
        if new and not self.current:
            self.current = new[0]


class Lab(widgets.VBox):
    """The WSI Lab dashboard for the slides under ``root``: one tab per registered panel.

    ``root`` is a folder path; a relative one is relative to the notebook's (the kernel's) working
    folder. ``select`` makes one slide current and selected. ``lab.state`` is the shared
    :class:`LabState`; ``lab.panels`` maps tab name to its widget. The header above the tabs names the
    current slide and how many are selected for tiling.
    """

    def __init__(self, root: str | os.PathLike | None = None, select: str | os.PathLike | None = None,
                 **kwargs) -> None:
        self.state = LabState(root=str(Path(root).expanduser()) if root is not None else default_slide_root())
        self.errors = ErrorBox()
        self.panels: dict[str, widgets.Widget] = {}
        self.tabs = widgets.Tab()
        self.header = widgets.HTML()
        self.header.add_class("wsi-lab-header")
        self.state.observe(self._update_header, ["current", "selected"])
        self._update_header()
        browser = None
        for spec in registered_panels():
            self.panels[spec.name] = self._build(spec)
            if spec.name == "Slides":
                browser = self.panels["Slides"]
                if hasattr(browser, "readable"):
                    self.state.slides = list(browser.readable["path"])
                    if select is None and self.state.slides and not self.state.current:
                        self.state.selected = [self.state.slides[0]]  # the first slide, before the others build
                        self.state.current = self.state.slides[0]
            if select is not None and not self.state.current:
                self.state.current = str(select)
                self.state.selected = [str(select)]
        self.tabs.children = list(self.panels.values())
        self.tabs.titles = tuple(self.panels)
        super().__init__([self.header, self.errors, self.tabs], **kwargs)
        self.add_class("wsi-lab-lab")

    def _update_header(self, _change=None) -> None:
        import html

        st = self.state
        cur = (f"looking at <b class='wsi-lab-current-name'>{html.escape(Path(st.current).name)}</b>"
               if st.current else "no slide chosen")
        n = len(st.selected)
        self.header.value = (f"<b>WSI Lab</b> &middot; slides in <code>{html.escape(st.root)}</code> &middot; {cur}"
                             f" &middot; <span class='wsi-lab-selected-count'>{n}</span> selected for tiling")

    def _build(self, spec: PanelSpec) -> widgets.Widget:
        try:
            w = spec.factory(self)
        except Exception as exc:
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
    traitlets.link((browser, "current"), (lab.state, "current"))
    return browser


def slide_picker(state: LabState) -> widgets.Dropdown:
    """A drop-down of the Lab's readable slides, linked both ways to ``state.current``."""
    def options() -> list[tuple[str, str]]:
        paths = list(state.slides)
        if state.current and state.current not in paths:
            paths.append(state.current)
        return [(Path(p).name, p) for p in paths]

    picker = widgets.Dropdown(options=options(), value=state.current if state.current else None,
                              description="Slide", layout=widgets.Layout(width="360px"))
    picker.add_class("wsi-lab-slide-picker")
    busy = [False]

    def from_state(_change=None) -> None:
        busy[0] = True
        try:
            picker.options = options()
            picker.value = state.current if state.current else None
        finally:
            busy[0] = False

    def to_state(change) -> None:
        if not busy[0] and change["new"] and change["new"] != state.current:
            state.current = change["new"]

    state.observe(from_state, ["current", "slides"])
    picker.observe(to_state, "value")
    picker._wsi_unlink = lambda: state.unobserve(from_state, ["current", "slides"])
    return picker


class ViewerPanel(widgets.VBox):
    """The deep-zoom viewer of the Lab's current slide with its layers: tissue mask, planned tile grid,
    and the tissue-fraction heatmap once the slide is tiled."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self.errors = ErrorBox()
        self.title = widgets.HTML()
        self.picker = slide_picker(state)
        self.mask_style = widgets.ToggleButtons(options=["fill", "outline"], value="fill", description="Mask",
                                                tooltip="draw the tissue mask filled (light) or as its outline",
                                                style={"button_width": "70px"})
        self.mask_style.add_class("wsi-lab-mask-style")
        self.mask_style.observe(self._refresh, "value")
        self.viewer: SlideViewer | None = None
        super().__init__([self.picker, self.title, self.errors])
        for name in ("current", "mask", "planned", "tiles"):
            state.observe(self._refresh, name)
        self._refresh()

    def layers(self) -> list[Layer]:
        """Overlay layers for the current slide (mask, tile grid, tissue_fraction heatmap)."""
        from wsi_lab import overlays

        st = self.state
        out: list[Layer] = []
        if st.mask is not None:
            out.append(overlays.mask_layer(st.mask, outline=self.mask_style.value == "outline"))
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
                self.title.value = message_html("Choose a slide above or click one in the Slides tab.", "info")
                self.children = [self.picker, self.title, self.errors]
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
            self.children = [widgets.HBox([self.picker, self.mask_style]), self.title, self.errors, self.viewer]

    def close(self) -> None:
        """Close the panel and its viewer (which releases the slide it opened). Safe to call twice."""
        if not getattr(self, "_closed", False):
            self._closed = True
            for name in ("current", "mask", "planned", "tiles"):
                self.state.unobserve(self._refresh, name)
            self.picker._wsi_unlink()
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
        self.tuner: ThresholdTuner | None = None
        self.override = widgets.Button(description="Use for this slide only", icon="thumb-tack",
                                       layout=widgets.Layout(width="220px"))
        self.override.on_click(self._save_override)
        self.note = widgets.HTML()
        self.picker = slide_picker(state)
        super().__init__([self.picker, self.errors])
        state.observe(self._load, "current")
        self._load()

    def _load(self, _change=None) -> None:
        from wsi_lab.ui.tuner import ThresholdTuner

        old = self.tuner
        self.tuner = None
        with self.errors.guard("tuner"):
            if not self.state.current:
                if old is not None:
                    old.close()
                self.children = [self.picker, widgets.HTML(message_html(
                    "Choose a slide above or click one in the Slides tab.", "info"))]
                return
            tuner = ThresholdTuner(self.state.current,
                                   settings=old.carried_settings() if old is not None else None)
            self.tuner = tuner
            for name in ("mask", "planned"):
                tuner.observe(self._publish, name)
            self._publish()
        if old is not None:
            old.close()
        kids = [self.picker, self.errors] + ([self.tuner, widgets.HBox([self.override, self.note])] if self.tuner else [])
        self.children = kids

    def close(self) -> None:
        """Close the panel and its tuner (which releases the slide it opened). Safe to call twice."""
        if not getattr(self, "_closed", False):
            self._closed = True
            self.state.unobserve(self._load, "current")
            self.picker._wsi_unlink()
        if self.tuner is not None:
            self.tuner.close()
            self.tuner = None
        super().close()

    def _publish(self, _change=None) -> None:
        t = self.tuner
        assert t is not None  # observed on the tuner, called once it is set
        with self.state.hold_trait_notifications():  # the tuner shows its own errors: not repeated here
            self.state.mask, self.state.planned = t.mask, t.planned
            self.state.params = t.valid_params

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

    def params():
        tune = lab.panels.get("Tune")
        tuner = getattr(tune, "tuner", None)
        if tuner is not None and tuner.valid_params is None:  # never tile with defaults behind the user's back
            from wsi_lab.errors import InvalidParameterError

            raise InvalidParameterError(f"the Tune tab holds an invalid value ({tuner.errors.text or 'see the Tune tab'});"
                                        " fix it there first")
        return st.params

    panel = TilingPanel(slides=lambda: st.selected, params=params, overrides=lambda: st.overrides)
    panel.observe(lambda change: setattr(st, "tiles", change["new"]), "table")

    def to_console(change) -> None:  # the Jobs tab shows tiling runs too
        if change["new"] and panel.job is not None:
            from wsi_lab.ui.jobs import register_job

            register_job(panel.job, "tiling", label=f"tiling {len(panel.slides())} slide(s)")

    panel.observe(to_console, "running")
    return panel


def _jobs_panel(lab: Lab) -> widgets.Widget:
    from wsi_lab.ui.console import JobConsole

    return JobConsole(table=lambda: lab.state.tiles)


def _doctor_panel(lab: Lab) -> widgets.Widget:
    from wsi_lab.ui.doctor_panel import DoctorPanel

    panel = DoctorPanel(run=False)  # the checks import torch & co: run them when the tab is first shown

    def on_tab(change) -> None:
        if lab.panels.get("Doctor") is panel and lab.tabs.titles[change["new"] or 0] == "Doctor" and not panel.checks:
            panel.run()

    lab.tabs.observe(on_tab, "selected_index")
    return panel


register_panel("Slides", _slides_panel, order=10)
register_panel("Viewer", _viewer_panel, order=20)
register_panel("Tune", _tune_panel, order=30)
register_panel("Tiling", _tiling_panel, order=40)
register_panel("Jobs", _jobs_panel, order=50)
register_panel("Doctor", _doctor_panel, order=90)
