"""npe2 reader: ``napari slide.svs`` opens a slide as a lazy multiscale image through WSI Lab (fluorescence:
one layer per channel); ``napari predictions.parquet`` (a ``wsi-lab predict`` output) opens its slide(s)
with the prediction layers the table holds (class heatmap, ``pred`` map, PCA latents, k-means
clusters, MIL attention)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wsi_lab.errors import WSILabError

log = logging.getLogger(__name__)

__all__ = ["napari_get_reader", "read_slides", "read_prediction_layers", "EXTENSIONS", "PREDICTION_LAYER_NAMES"]

#: the prediction layers a predictions table opens with (those its columns allow)
PREDICTION_LAYER_NAMES = ("heatmap", "pred", "pca", "clusters", "attention")

#: extensions declared in napari.yaml (lower case)
EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif")


def _readable(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in EXTENSIONS and Path(path).is_file()


def napari_get_reader(path):
    """Return :func:`read_slides` when every path is a slide file WSI Lab can open, else ``None``
    (napari then asks the next reader)."""
    paths = path if isinstance(path, list) else [path]
    if paths and all(isinstance(p, (str, os.PathLike)) and Path(p).suffix.lower() == ".parquet" and Path(p).is_file()
                     for p in paths):
        return read_prediction_layers if all(_predictions_with_slides(p) for p in paths) else None
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


def _predictions_with_slides(path) -> bool:
    from wsi_lab.data.tile_reader import slide_paths_of
    from wsi_lab.infer.run import read_predictions

    try:
        table = read_predictions(path)
        return bool(len(table)) and bool(slide_paths_of(table))
    except WSILabError as exc:
        log.info("wsi-lab reader declines %s: %s", path, exc)
        return False


def read_prediction_layers(path) -> list[tuple]:
    """napari layer data of each predictions table: its slides (as :func:`read_slides`) and, over each,
    the layers of :data:`PREDICTION_LAYER_NAMES` its columns allow, aligned in the slide's units."""
    from wsi_lab.data.tile_reader import slide_paths_of
    from wsi_lab.errors import InvalidParameterError
    from wsi_lab.infer.run import read_predictions
    from wsi_lab.napari._layers import layer_data
    from wsi_lab.napari._pyramid import slide_scale
    from wsi_lab.overlays import slide_rows
    from wsi_lab.overlays.predictions import named_layer
    from wsi_lab.slide import open_slide

    out: list[tuple] = []
    for p in path if isinstance(path, list) else [path]:
        table = read_predictions(p)
        for slide_path in slide_paths_of(table).values():
            out.extend(read_slides(slide_path))
            with open_slide(slide_path) as slide:
                rows = slide_rows(table, slide)
                scale, units = slide_scale(slide)
                for name in PREDICTION_LAYER_NAMES:
                    try:
                        layer = named_layer(rows, name)
                    except InvalidParameterError as exc:  # the table has no columns for this kind
                        log.info("%s: no %s layer (%s)", p, name, exc)
                        continue
                    if layer is not None:
                        data, kwargs, kind = layer_data(layer, slide.dimensions, scale, units)
                        out.append((data, {**kwargs, "name": f"{slide.slide_id}: {kwargs['name']}"}, kind))
    return out
