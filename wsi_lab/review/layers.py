"""Overlay layers of the review: the standing decisions of a slide (coloured by label) and a highlight of
chosen tiles (brushed points, a gallery). Both are ordinary :class:`~wsi_lab.overlays.TileLayer`\\ s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wsi_lab.overlays import TileLayer, category_layer, tile_extent

if TYPE_CHECKING:
    from wsi_lab.review.decisions import DecisionStore

__all__ = ["decisions_layer", "highlight_layer"]

HIGHLIGHT_NAME = "selected tiles"


def decisions_layer(store: DecisionStore, slide_id: str, classes: Sequence[str] = (), opacity: float = 0.6) -> TileLayer:
    """The standing decisions of ``slide_id`` coloured by label (``classes`` first, in that order, so a class
    keeps the colour of the prediction map)."""
    eff = store.effective(slide_id)
    labels = list(dict.fromkeys([*map(str, classes), *sorted(set(eff["label"].astype(str)))]))
    frame = pd.DataFrame({"x": eff["x"].to_numpy(float), "y": eff["y"].to_numpy(float),
                          "size0": eff["size"].fillna(1.0).to_numpy(float),
                          "label": pd.Categorical(eff["label"].astype(str), categories=labels)})
    return category_layer(frame, "label", opacity=opacity, name="decisions")


def highlight_layer(rows: pd.DataFrame, color: tuple[int, int, int] = (255, 230, 0), opacity: float = 0.55) -> TileLayer:
    """The tiles of ``rows`` filled with one colour (default yellow): what is selected, on the slide."""
    n = len(rows)
    rgba = np.zeros((n, 4), np.uint8)
    rgba[:] = (*color, 255)
    size = tile_extent(rows) if n else np.zeros(0)
    legend = {"type": "color", "color": "#{:02x}{:02x}{:02x}".format(*color), "count": int(n)}
    return TileLayer(rows["x"].to_numpy(float) if n else np.zeros(0), rows["y"].to_numpy(float) if n else np.zeros(0),
                     size, rgba, "categorical", HIGHLIGHT_NAME, opacity, legend)
