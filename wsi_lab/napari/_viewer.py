"""``open_in_napari``: a slide as a lazy multiscale image plus aligned overlays in a napari viewer."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from wsi_lab.errors import require
from wsi_lab.napari._layers import layer_data, resolve_overlays
from wsi_lab.napari._pyramid import slide_pyramid, slide_scale
from wsi_lab.overlays import slide_rows

log = logging.getLogger(__name__)

__all__ = ["open_in_napari", "slide_layer_data", "run_or_screenshot"]


def _napari():
    return require("napari", "napari", "viewing slides in napari")


def slide_layer_data(slide, chunk: int = 1024) -> tuple:
    """napari ``(data, kwargs, "image")`` for ``slide``: a lazy Dask pyramid (see
    :func:`~wsi_lab.napari._pyramid.slide_pyramid`), scaled to µm when the slide knows its µm/px."""
    scale, units = slide_scale(slide)
    meta = {"path": str(slide.path), "slide_id": slide.slide_id, "mpp": slide.mpp, "backend": slide.backend,
            "level_downsamples": list(slide.level_downsamples)}
    kwargs = {"name": slide.slide_id, "rgb": True, "multiscale": True, "scale": scale, "units": units,
              "contrast_limits": (0, 255), "metadata": meta}
    return slide_pyramid(slide, chunk=chunk), kwargs, "image"


def open_in_napari(slide_or_path, overlays: Sequence = (), table=None, mask=None, viewer=None,
                   show: bool = True, chunk: int = 1024, backend: str = "auto", display="auto"):
    """Open a slide in napari as a lazy multiscale image (chunks of ``chunk`` pixels read on demand)
    with aligned overlays, and return the viewer. ``overlays`` holds
    :class:`~wsi_lab.overlays.Layer` objects or names (``"tissue"``, ``"grid"``, ``"latent"``, a
    ``table`` column: numbers become a heatmap, labels categories). ``mask`` (a TissueMask) and
    ``table`` (a TileTable; tiles of other slides are dropped) feed the named overlays. Layers are
    in µm when the slide has µm/px, else in level-0 pixels. ``display`` (``"auto"``, ``"raw"`` or
    :class:`~wsi_lab.slide.display.DisplaySettings`): fluorescence opens as one layer per channel with its
    colour map and contrast limits. Needs ``pip install 'wsi-lab[napari]'``."""
    napari = _napari()
    from wsi_lab.slide import Slide, open_slide

    slide = slide_or_path if isinstance(slide_or_path, Slide) else open_slide(os.fspath(slide_or_path), backend=backend)
    table = slide_rows(table, slide)
    layers = resolve_overlays(overlays, table=table, mask=mask, slide=slide)
    if viewer is None:
        viewer = napari.Viewer(title=f"WSI Lab: {slide.slide_id}", show=show)
    from wsi_lab.napari._display import display_layers_data

    for data, kwargs, _ in display_layers_data(slide, chunk=chunk, display=display):  # fluorescence: a layer per channel
        viewer.add_image(data, **kwargs)
    scale, units = kwargs["scale"], kwargs["units"]
    for layer in layers:
        ldata, lkw, ltype = layer_data(layer, slide.dimensions, scale, units)
        getattr(viewer, f"add_{ltype}")(ldata, **lkw)
    if units == "um":
        scale_bar(viewer).visible = True
    viewer.reset_view()
    return viewer


def run_or_screenshot(viewer, screenshot: str | os.PathLike | None = None) -> int:
    """Run the napari event loop until the window closes, or (``screenshot``) save the canvas as an
    RGBA PNG once it is drawn, close the viewer and return; returns an exit code (0)."""
    napari = _napari()
    if screenshot is None:
        napari.run()
        return 0
    from qtpy.QtWidgets import QApplication

    from wsi_lab.io import save_image

    img = None
    for _ in range(100):  # let the canvas draw (≤ ~5 s): visible layers leave it non-black
        QApplication.processEvents()
        time.sleep(0.05)
        img = viewer.screenshot(canvas_only=True, flash=False)
        if img[..., :3].max() > 0:
            break
    assert img is not None  # the loop above runs at least once
    save_image(img, screenshot)
    viewer.close()
    return 0


def scale_bar(viewer: Any) -> Any:
    """The viewer's scale-bar overlay (``viewer.canvas.overlays.scale_bar`` since napari 0.9, where
    ``viewer.scale_bar`` is deprecated; the old attribute on older napari)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    bar = getattr(overlays, "scale_bar", None) if overlays is not None else None
    return bar if bar is not None else viewer.scale_bar
