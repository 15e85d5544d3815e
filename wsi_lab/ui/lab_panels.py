"""The Lab's built-in Viewer and Tune panels and the slide picker they share (split from
:mod:`wsi_lab.ui.lab`, which registers them and re-exports these names)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import ipywidgets as widgets

from wsi_lab.ui.common import ErrorBox, message_html

if TYPE_CHECKING:
    from wsi_lab.overlays import Layer
    from wsi_lab.ui.lab import LabState
    from wsi_lab.ui.tuner import ThresholdTuner
    from wsi_lab.ui.viewer import SlideViewer

__all__ = ["slide_picker", "ViewerPanel", "TunerPanel"]


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
