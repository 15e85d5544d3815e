"""npe2 reader: ``napari slide.svs`` opens a slide as a lazy multiscale image through WSI Lab (fluorescence:
one layer per channel)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wsi_lab.errors import WSILabError

log = logging.getLogger(__name__)

__all__ = ["napari_get_reader", "read_slides", "EXTENSIONS"]

#: extensions declared in napari.yaml (lower case)
EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif")


def _readable(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in EXTENSIONS and Path(path).is_file()


def napari_get_reader(path):
    """Return :func:`read_slides` when every path is a slide file WSI Lab can open, else ``None``
    (napari then asks the next reader)."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(_readable(p) for p in paths):
        return None
    from wsi_lab.slide import open_slide

    for p in paths:
        try:
            open_slide(p).close()
        except WSILabError as exc:
            log.info("wsi-lab reader declines %s: %s", p, exc)
            return None
    return read_slides


def read_slides(path) -> list[tuple]:
    """napari layer data of each slide, scaled in µm when known: brightfield as one lazy multiscale RGB
    image; fluorescence as one additive layer per channel with its name, colour map, contrast limits and
    gamma (those recorded in the current directory's ``display.json`` when there are some, else the
    slide's automatic ones; see :mod:`wsi_lab.slide.display`)."""
    from wsi_lab.napari._display import display_layers_data
    from wsi_lab.slide import open_slide
    from wsi_lab.slide.display_file import recorded_display

    paths = path if isinstance(path, list) else [path]
    out: list[tuple] = []
    for p in paths:
        slide = open_slide(p)
        out.extend(display_layers_data(slide, display=recorded_display(slide)))
    return out
