"""``ThresholdTuner``: tissue-detection controls with a live mask overlay and the tile count they give.

A thin view over :func:`wsi_lab.detect_tissue` (which caches the low-resolution features of a slide, so
re-thresholding is fast), :func:`wsi_lab.plan_tiles` (tiles kept, from the mask's integral image) and
:mod:`wsi_lab.overlays` (mask and tile-grid rendering). The slide's thumbnail is read once.
``tuner.params`` is the :class:`~wsi_lab.tiling.TilingParams` the controls describe;
:meth:`ThresholdTuner.save_overrides` stores them as this slide's override in a JSON file.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import traitlets

from wsi_lab.errors import InvalidParameterError
from wsi_lab.slide import Slide, open_slide
from wsi_lab.slide.display import DisplaySettings
from wsi_lab.slide.display_file import recorded_display
from wsi_lab.tiling.preview import min_object_params, preview_tiling
from wsi_lab.tissue import DEFAULT_METHOD, TISSUE_METHODS
from wsi_lab.ui.common import ErrorBox, composite, set_image
from wsi_lab.ui.display_controls import follow_display

log = logging.getLogger(__name__)

#: slider range and default of the main threshold of each method (None default = automatic)
THRESHOLDS: dict[str, dict[str, Any]] = {m: spec.slider() for m, spec in TISSUE_METHODS.items()}
#: what the threshold of each method measures, with its unit (shown under the slider)
THRESHOLD_HINTS = {
    "otsu": "colour saturation 0–255 (fluorescence: brightness); pixels above it are tissue",
    "variance": "intensity variance per mask cell (grey levels²); cells above it are tissue; typical 50–500",
    "background": "grey level 0–255; brighter (fluorescence: darker) pixels are background",
}
DISPLAY_SIZE = 512
#: preview colours: tissue mask and kept-tile outlines
MASK_COLOR, GRID_COLOR = (0, 200, 0), (255, 200, 0)


class ThresholdTuner(widgets.VBox):
    """Tune tissue detection on one slide and see the mask and the number of tiles kept, live.

    Observable traits: ``mask`` (TissueMask or None when no tissue), ``planned`` (TileTable of the tiles
    that would be kept), ``n_tiles``. ``last_update_ms`` is the time the last update took. ``settings``
    (from another tuner's :meth:`settings`) sets the controls before the first update.
    """

    mask = traitlets.Any(None).tag(sync=False)
    planned = traitlets.Any(None).tag(sync=False)
    n_tiles = traitlets.Int(0).tag(sync=False)

    def __init__(self, slide: Slide | str | os.PathLike, method: str = DEFAULT_METHOD, tile_size: int = 256,
                 mpp: float | None = None, min_tissue: float = 0.5, display_size: int = DISPLAY_SIZE,
                 settings: dict[str, Any] | None = None, **kwargs) -> None:
        self._quiet = False
        self._owns_slide = False  # set once a slide is open: close()/__del__ work after a failed open
        self._params = None
        self.errors = ErrorBox()
        self.slide = slide if isinstance(slide, Slide) else open_slide(slide)
        self._owns_slide = not isinstance(slide, Slide)
        try:
            self._build(method, tile_size, mpp, min_tissue, display_size, settings, **kwargs)
        except BaseException:
            self.close()
            raise

    def _build(self, method, tile_size, mpp, min_tissue, display_size, settings, **kwargs) -> None:
        self.last_update_ms = float("nan")
        self._thumb = self.slide.get_thumbnail(display_size, display=recorded_display(self.slide))  # shown, not analysed
        self._display_size = display_size
        follow_display(self, self.slide, ThresholdTuner._follow_display)  # a picker's change redraws the background
        style = {"description_width": "110px"}
        def wide() -> widgets.Layout:  # one Layout per widget: hiding one must not hide the others
            return widgets.Layout(width="360px")

        def hint(text: str) -> widgets.HTML:
            h = widgets.HTML(f"<small style='color:#555'>{text}</small>", layout=widgets.Layout(margin="-4px 0 4px 116px"))
            h.add_class("wsi-lab-hint")
            return h

        # sliders update while dragged: an update takes ~10–25 ms (benchmarks/tuner.py), well under a frame budget
        self.method = widgets.Dropdown(options=list(THRESHOLDS), value=method, description="Method", style=style,
                                       layout=wide())
        self.auto = widgets.Checkbox(value=True, description="automatic threshold (per slide)", indent=False,
                                     tooltip="the method picks the threshold for each slide; moving the slider "
                                             "fixes it for this slide")
        # logarithmic: typical values (otsu ~20–40, variance ~50–500) are not squeezed to the far left
        self.threshold = widgets.FloatLogSlider(description="Threshold", style=style, layout=wide(), base=10,
                                                min=0, max=3, step=0.01, value=10,
                                                continuous_update=True, readout_format=".0f")
        self.threshold_hint = hint("")
        self.max_background = widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="Max background",
                                                  style=style, layout=wide(), continuous_update=True,
                                                  tooltip="largest background fraction a tissue cell may have")
        self.closing = widgets.IntSlider(value=0, min=0, max=10, description="Closing (px)", style=style,
                                         layout=wide(), continuous_update=True,
                                         tooltip="fill gaps up to this radius in mask pixels (0 = off)")
        self.opening = widgets.IntSlider(value=0, min=0, max=10, description="Opening (px)", style=style,
                                         layout=wide(), continuous_update=True,
                                         tooltip="remove specks up to this radius in mask pixels (0 = off)")
        unit = "µm²" if self.slide.mpp else "px²"
        self.min_object = widgets.FloatText(value=0.0, description=f"Min object {unit}", style=style, layout=wide(),
                                            step=100, tooltip=f"drop tissue pieces smaller than this area in {unit} "
                                                              "(0 = off)")
        self.tile_size = widgets.IntText(value=tile_size, description="Tile size (px)", style=style, layout=wide(),
                                         tooltip="tile side in output pixels (≥ 1)")
        self.mpp = widgets.FloatText(value=mpp or 0.0, description="Tile µm/px", style=style, layout=wide(),
                                     step=0.05, tooltip="µm per output pixel; 0 = the slide's native resolution")
        self.min_tissue = widgets.FloatSlider(value=min_tissue, min=0, max=1, step=0.05, description="Min tissue",
                                              style=style, layout=wide(), continuous_update=True,
                                              readout_format=".0%",
                                              tooltip="fraction of a tile that must be tissue for it to be kept")
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(max_width=f"{int(display_size)}px"))
        self.image.add_class("wsi-lab-tuner-image")
        self.show_mask = widgets.Checkbox(value=True, description="tissue", indent=False,
                                          layout=widgets.Layout(width="auto"))
        self.show_grid = widgets.Checkbox(value=True, description="kept tiles", indent=False,
                                          layout=widgets.Layout(width="auto"))
        sw = ("<span style='display:inline-block;width:12px;height:12px;margin:0 4px 0 10px;vertical-align:middle;"
              "background:{}'></span>")
        legend = widgets.HBox([widgets.HTML(sw.format("rgb({},{},{})".format(*MASK_COLOR))), self.show_mask,
                               widgets.HTML(sw.format("rgb({},{},{})".format(*GRID_COLOR))), self.show_grid])
        legend.add_class("wsi-lab-tuner-legend")
        self.count = widgets.HTML()
        self.count.add_class("wsi-lab-tile-count")
        controls = widgets.VBox([self.method, self.auto, self.threshold, self.threshold_hint, self.max_background,
                                 self.closing, self.opening, self.min_object, hint("0 = off"), self.tile_size,
                                 self.mpp, hint("0 = the slide's native resolution"
                                                + (f" ({self.slide.mpp[0]:.3g} µm/px)" if self.slide.mpp else "")),
                                 self.min_tissue, self.count],
                                layout=widgets.Layout(min_width="380px"))
        self._apply_method_defaults(method)
        if settings:
            self._set_controls(settings)
        title = widgets.HTML(f"<b>{self.slide.path.name}</b> &middot; {self.slide.dimensions[0]}×"
                             f"{self.slide.dimensions[1]} px")
        super().__init__([title, self.errors, widgets.HBox([controls, widgets.VBox([legend, self.image])])],
                         **kwargs)
        self.add_class("wsi-lab-tuner")
        self.method.observe(self._on_method, "value")
        for w in (self.auto, self.threshold, self.max_background, self.closing, self.opening, self.min_object,
                  self.tile_size, self.mpp, self.min_tissue):
            w.observe(self._on_change, "value")
        for w in (self.show_mask, self.show_grid):
            w.observe(lambda _c: self._redraw(), "value")
        self.update()

    # -- controls -> parameters ---------------------------------------------------------------
    def _apply_method_defaults(self, method: str) -> None:
        spec = THRESHOLDS[method]
        self._quiet = True
        try:
            # exponents from the method's step (1 for 0–255 grey levels, 0.002 for optical density) to its max
            low, high = min(0.0, math.log10(spec["step"])), math.log10(spec["max"])
            if low > self.threshold.max:
                self.threshold.max, self.threshold.min = high, low
            else:
                self.threshold.min, self.threshold.max = low, high
            if spec["default"] is not None:
                self.threshold.value = spec["default"]
            else:
                self.auto.value = True  # a new method starts from its automatic threshold
        finally:
            self._quiet = False
        self.threshold.tooltip = spec["help"]
        self.threshold_hint.value = (f"<small style='color:#555'>{THRESHOLD_HINTS.get(method, spec['help'])}; "
                                     f"range {10 ** self.threshold.min:.3g}–{spec['max']:g}</small>")
        self.auto.layout.display = "none" if spec["default"] is not None else None
        self.max_background.layout.display = None if method == "background" else "none"

    def method_params(self) -> dict[str, Any]:
        """Keyword arguments for :func:`wsi_lab.detect_tissue` from the controls."""
        m = self.method.value
        spec = THRESHOLDS[m]
        p: dict[str, Any] = {}
        if spec["default"] is not None or not self.auto.value:
            p[spec["param"]] = float(self.threshold.value)
        if m == "background":
            p["max_background"] = float(self.max_background.value)
        if self.closing.value:
            p["closing"] = int(self.closing.value)
        if self.opening.value:
            p["opening"] = int(self.opening.value)
        p.update(min_object_params(self.slide, float(self.min_object.value)))
        return p

    @property
    def params(self):
        """The :class:`~wsi_lab.tiling.TilingParams` these controls describe (validated)."""
        from wsi_lab.tiling.params import TilingParams

        mpp = float(self.mpp.value) if self.mpp.value else None
        if mpp is not None and not (0 < mpp < 1000):
            raise InvalidParameterError(f"Tile µm/px must be > 0 (0 = the slide's native resolution), got {mpp:.4g}")
        return TilingParams(tile_size=int(self.tile_size.value), mpp=mpp, method=self.method.value,
                            method_params=self.method_params(), min_tissue=float(self.min_tissue.value)).validate()

    def save_overrides(self, path: str | os.PathLike) -> Path:
        """Store ``params`` as this slide's override in the JSON file ``path`` (``{slide_id: params}``),
        keeping the other slides' entries; written atomically (:func:`wsi_lab.tiling.params.save_override`)."""
        from wsi_lab.tiling.params import save_override

        return save_override(path, self.slide.slide_id, self.params)

    # -- updates ------------------------------------------------------------------------------
    def _on_method(self, change) -> None:
        if self._quiet:
            return
        self._apply_method_defaults(change["new"])
        self.update()

    def _on_change(self, change) -> None:
        if self._quiet:
            return
        if change["owner"] is self.threshold and self.auto.value:
            self._silent(self.auto, False)  # moving the slider means "use this value"
        self.update()

    def update(self) -> float:
        """Re-detect tissue with the current controls, re-plan the tiles and redraw; returns the time
        taken in milliseconds. Bad values and typed core errors are shown in the panel (once)."""
        t0 = time.perf_counter()
        mask = planned = params = None
        with self.errors.guard():
            params = self.params  # validates tile size, µm/px, min tissue
            self._params = None
            preview = preview_tiling(self.slide, params)
            mask, planned = preview.mask, preview.planned
            self._params = params
            if self.auto.value and THRESHOLDS[self.method.value]["default"] is None:
                auto_t = mask.params.get(THRESHOLDS[self.method.value]["param"])
                if auto_t is not None and math.isfinite(float(auto_t)):
                    self._silent(self.threshold, max(1.0, float(auto_t)))
        if params is None or mask is None:
            self._params = None
        self.mask, self.planned = mask, planned
        self.n_tiles = 0 if planned is None else len(planned)
        self._redraw()
        self.last_update_ms = (time.perf_counter() - t0) * 1000
        self.count.value = self._count_html(mask, planned)
        return self.last_update_ms

    @property
    def valid_params(self):
        """The :class:`~wsi_lab.tiling.TilingParams` of the last update that succeeded, else ``None``
        (never raises: the error is already shown in the panel)."""
        return self._params

    def _redraw(self) -> None:
        """The thumbnail with the layers ticked in the legend: tissue mask (green), kept tiles (yellow)."""
        from wsi_lab.overlays import grid_layer, mask_layer

        picture = self._thumb
        W, H = self.slide.dimensions
        th, tw = self._thumb.shape[:2]
        if self.mask is not None and self.show_mask.value:
            picture = composite(picture, mask_layer(self.mask, color=MASK_COLOR, opacity=0.35)
                                .render_region((0, 0, W, H), (tw, th)))
        if self.planned is not None and len(self.planned) and self.show_grid.value:
            picture = composite(picture, grid_layer(self.planned, color=GRID_COLOR, slide=self.slide)
                                .render_region((0, 0, W, H), (tw, th)))
        set_image(self.image, picture, "jpeg")

    def _follow_display(self, settings: DisplaySettings | None) -> None:
        """Settings accepted by a picker of this slide (ui/display_controls.py): the background follows."""
        self._thumb = self.slide.get_thumbnail(self._display_size, display=settings)
        self._redraw()

    def _silent(self, widget, value: Any) -> None:
        """Set a control without triggering another update."""
        quiet, self._quiet = self._quiet, True
        try:
            widget.value = value
        finally:
            self._quiet = quiet

    def _count_html(self, mask, planned) -> str:
        if planned is None:
            return "<span class='wsi-lab-tiles-kept' data-tiles='0'>no tiles</span>"
        grid = planned.attrs.get("wsi_lab", {}).get("grid_tiles", len(planned))
        frac = f", tissue {mask.fraction:.1%} of the slide" if mask is not None else ""
        return (f"<span class='wsi-lab-tiles-kept' data-tiles='{len(planned)}'><b>{len(planned)}</b> of {grid} "
                f"tiles kept{frac}</span> <small>({self.last_update_ms:.0f} ms)</small>")

    def settings(self) -> dict[str, Any]:
        """The control values (to carry them over to another slide with :meth:`apply_settings`)."""
        names = ("method", "auto", "threshold", "max_background", "closing", "opening", "min_object", "tile_size",
                 "mpp", "min_tissue")
        return {n: getattr(self, n).value for n in names}

    def carried_settings(self) -> dict[str, Any]:
        """:meth:`settings` to carry to another slide: an automatic threshold is not carried (the next
        slide computes its own; the checkbox starts on again)."""
        s = self.settings()
        if THRESHOLDS[s["method"]]["default"] is None:
            s.pop("auto")
            s.pop("threshold")
        return s

    def _set_controls(self, settings: dict[str, Any]) -> None:
        if "method" in settings:
            self._silent(self.method, settings["method"])
            self._apply_method_defaults(settings["method"])
        for name, value in settings.items():
            if name != "method" and hasattr(self, name):
                self._silent(getattr(self, name), value)

    def apply_settings(self, settings: dict[str, Any]) -> None:
        """Set the controls from :meth:`settings` output and update once."""
        self._set_controls(settings)
        self.update()

    def close(self) -> None:
        """Close the widget (and the slide when the tuner opened it). Safe to call twice."""
        if getattr(self, "_owns_slide", False):
            self._owns_slide = False
            self.slide.close()
        super().close()


def tuned_thumbnail(tuner: ThresholdTuner) -> np.ndarray:
    """The picture the tuner shows now, decoded as (H, W, 3) uint8 (for tests and notebooks)."""
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(tuner.image.value)).convert("RGB"))
