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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets
import traitlets

from wsi_lab.ui.common import ErrorBox
from wsi_lab.ui.lab_panels import TunerPanel, ViewerPanel, slide_picker

__all__ = ["Lab", "LabState", "LazyPanels", "PanelSpec", "register_panel", "unregister_panel", "registered_panels",
           "default_slide_root", "slide_picker", "ViewerPanel", "TunerPanel"]

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
    ``factory(lab)`` returns the tab's widget; it is called once per :class:`Lab`, when the tab is first
    selected or ``lab.panels[name]`` first read (tabs are built lazily: a Lab opens fast)."""
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
        self.tabs = widgets.Tab()
        self.header = widgets.HTML()
        self.header.add_class("wsi-lab-header")
        self.state.observe(self._update_header, ["current", "selected"])
        self._update_header()
        specs = registered_panels()
        self.panels = LazyPanels(self, specs)
        self.tabs.children = list(self.panels.boxes.values())
        self.tabs.titles = tuple(self.panels)
        if "Slides" in self.panels:  # the slide list and the first current slide come from it
            browser = self.panels["Slides"]
            if hasattr(browser, "readable"):
                self.state.slides = list(browser.readable["path"])
                if select is None and self.state.slides and not self.state.current:
                    self.state.selected = [self.state.slides[0]]
                    self.state.current = self.state.slides[0]
        if select is not None and not self.state.current:
            self.state.current = str(select)
            self.state.selected = [str(select)]
        self.tabs.observe(self._on_tab, "selected_index")
        self._on_tab()
        super().__init__([self.header, self.errors, self.tabs], **kwargs)
        self.add_class("wsi-lab-lab")

    def _on_tab(self, _change=None) -> None:
        """Build the tab the user switched to (tabs are built on first selection, or first access)."""
        i = self.tabs.selected_index
        names = list(self.panels)
        if i is not None and 0 <= i < len(names):
            self.panels[names[i]]

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
        """Close the Lab and every panel built (open slides are released, a tiling run is cancelled)."""
        panels = getattr(self, "panels", None)
        if panels is not None:
            panels.close()
        super().close()

    def show_tab(self, name: str) -> None:
        """Switch to the tab called ``name``."""
        self.tabs.selected_index = list(self.panels).index(name)


class LazyPanels(Mapping[str, widgets.Widget]):
    """``lab.panels``: tab name -> the panel's widget, in tab order. A panel is built (its factory called,
    once) when its tab is first selected or its entry first read; until then its tab holds an empty box.
    :meth:`built` gives the panels built so far without building others."""

    def __init__(self, lab: Lab, specs: list[PanelSpec]) -> None:
        self._lab = lab
        self._specs = {s.name: s for s in specs}
        self._built: dict[str, widgets.Widget] = {}
        self.boxes: dict[str, widgets.Box] = {}
        for name in self._specs:
            box = widgets.VBox()
            box.add_class("wsi-lab-tab")
            self.boxes[name] = box

    def __getitem__(self, name: str) -> widgets.Widget:
        w = self._built.get(name)
        if w is None:
            w = self._built[name] = self._lab._build(self._specs[name])  # KeyError for an unknown tab
            self.boxes[name].children = [w]
        return w

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def built(self) -> dict[str, widgets.Widget]:
        """The panels built so far (name -> widget)."""
        return dict(self._built)

    def close(self) -> None:
        """Close every panel built so far and the tab boxes; nothing is built any more."""
        for w in self._built.values():
            w.close()
        for box in self.boxes.values():
            box.close()
        self._specs = {n: s for n, s in self._specs.items() if n in self._built}


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


def _viewer_panel(lab: Lab) -> widgets.Widget:
    return ViewerPanel(lab.state)


def _tune_panel(lab: Lab) -> widgets.Widget:
    return TunerPanel(lab.state)


def _tiling_panel(lab: Lab) -> widgets.Widget:
    from wsi_lab.ui.tiling_panel import TilingPanel

    st = lab.state

    def params():
        tune = lab.panels.built().get("Tune")  # never opened: no tuner values, the defaults apply
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
    titles, index = lab.tabs.titles, lab.tabs.selected_index
    if index is not None and index < len(titles) and titles[index] == "Doctor":  # built by that very click
        panel.run()
    return panel


register_panel("Slides", _slides_panel, order=10)
register_panel("Viewer", _viewer_panel, order=20)
register_panel("Tune", _tune_panel, order=30)
register_panel("Tiling", _tiling_panel, order=40)


def _review_panel(lab: Lab) -> widgets.Widget:
    from wsi_lab.ui.review_tabs import review_panel

    return review_panel(lab)


def _explorer_panel(lab: Lab) -> widgets.Widget:
    from wsi_lab.ui.review_tabs import explorer_panel

    return explorer_panel(lab)


register_panel("Review", _review_panel, order=60)
register_panel("Explorer", _explorer_panel, order=70)
register_panel("Jobs", _jobs_panel, order=50)
register_panel("Doctor", _doctor_panel, order=90)
