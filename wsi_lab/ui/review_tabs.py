"""The Lab's Review and Explorer tabs: a predictions path (``$WSI_LAB_PREDICTIONS`` or typed in) and the
:class:`~wsi_lab.ui.review.ReviewPanel` / :class:`~wsi_lab.ui.explorer.LatentExplorer` over it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from wsi_lab.ui.common import ErrorBox

__all__ = ["review_panel", "explorer_panel"]


def _store(lab: Any, predictions: Path) -> Any:
    """The decision store beside ``predictions`` (``<folder>/review``), one per folder for the Lab: the
    Review and Explorer tabs write through the same store, so one undo sees both."""
    from wsi_lab.review import DecisionStore

    folder = predictions.expanduser().parent / "review"
    stores = getattr(lab, "_review_stores", None)
    if stores is None:
        stores = {}
        if lab is not None:
            lab._review_stores = stores
    if folder not in stores:
        stores[folder] = DecisionStore(folder)
    return stores[folder]


def review_panel(lab: Any) -> widgets.Widget:
    """The Lab's Review tab: the predictions in ``$WSI_LAB_PREDICTIONS`` (or typed in) and their decisions
    beside them (``<predictions folder>/review``)."""
    box = widgets.VBox()
    path = widgets.Text(value=os.environ.get("WSI_LAB_PREDICTIONS", ""), description="Predictions",
                        placeholder="predictions.parquet", layout=widgets.Layout(width="520px"))
    load = widgets.Button(description="Review", icon="check")
    errors = ErrorBox()

    def go(_b=None) -> None:
        with errors.guard("review"):
            if not path.value:
                raise ValueError("type the path of a predictions Parquet file (from wsi_lab.infer.predict)")
            p = Path(path.value).expanduser()
            from wsi_lab.ui.review import ReviewPanel

            panel = ReviewPanel(p, _store(lab, p))
            box.children = [widgets.HBox([path, load]), errors, panel]

    load.on_click(go)
    box.children = [widgets.HBox([path, load]), errors]
    if path.value:
        go()
    return box


def explorer_panel(lab: Any) -> widgets.Widget:
    """The Lab's Explorer tab: the latents in ``$WSI_LAB_PREDICTIONS`` (or typed in); decisions on brushed
    sets go to the Review tab's store."""
    box = widgets.VBox()
    path = widgets.Text(value=os.environ.get("WSI_LAB_PREDICTIONS", ""), description="Latents",
                        placeholder="predictions.parquet (with z_NN columns)", layout=widgets.Layout(width="520px"))
    load = widgets.Button(description="Explore", icon="search")
    errors = ErrorBox()

    def go(_b=None) -> None:
        with errors.guard("explorer"):
            if not path.value:
                raise ValueError("type the path of a predictions Parquet file with latent (z_NN) columns")
            from wsi_lab.ui.explorer import LatentExplorer

            box.children = [widgets.HBox([path, load]), errors,
                            LatentExplorer(path.value, decisions=_store(lab, Path(path.value)))]

    load.on_click(go)
    box.children = [widgets.HBox([path, load]), errors]
    return box
