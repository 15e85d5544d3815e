"""The Lab's Review and Explorer tabs: a predictions path (``$WSI_LAB_PREDICTIONS`` or typed in) and the
:class:`~wsi_lab.ui.review.ReviewPanel` / :class:`~wsi_lab.ui.explorer.LatentExplorer` over it."""

from __future__ import annotations

import os
from collections.abc import Callable
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


def _path_tab(what: str, label: str, placeholder: str, button: str, icon: str, missing: str,
              make: Callable[[Path], widgets.Widget], load_now: bool) -> widgets.Widget:
    """A tab that opens ``make(path)`` for the predictions path in ``$WSI_LAB_PREDICTIONS`` or typed in."""
    box = widgets.VBox()
    path = widgets.Text(value=os.environ.get("WSI_LAB_PREDICTIONS", ""), description=label,
                        placeholder=placeholder, layout=widgets.Layout(width="520px"))
    load = widgets.Button(description=button, icon=icon)
    errors = ErrorBox()

    def go(_b=None) -> None:
        with errors.guard(what):
            if not path.value:
                raise ValueError(missing)
            box.children = [widgets.HBox([path, load]), errors, make(Path(path.value).expanduser())]

    load.on_click(go)
    box.children = [widgets.HBox([path, load]), errors]
    if load_now and path.value:
        go()
    return box


def review_panel(lab: Any) -> widgets.Widget:
    """The Lab's Review tab: the predictions in ``$WSI_LAB_PREDICTIONS`` (or typed in) and their decisions
    beside them (``<predictions folder>/review``)."""
    def make(p: Path) -> widgets.Widget:
        from wsi_lab.ui.review import ReviewPanel

        return ReviewPanel(p, _store(lab, p))

    return _path_tab("review", "Predictions", "predictions.parquet", "Review", "check",
                     "type the path of a predictions Parquet file (from wsi_lab.infer.predict)", make, load_now=True)


def explorer_panel(lab: Any) -> widgets.Widget:
    """The Lab's Explorer tab: the latents in ``$WSI_LAB_PREDICTIONS`` (or typed in); decisions on brushed
    sets go to the Review tab's store."""
    def make(p: Path) -> widgets.Widget:
        from wsi_lab.ui.explorer import LatentExplorer

        return LatentExplorer(str(p), decisions=_store(lab, p))

    return _path_tab("explorer", "Latents", "predictions.parquet (with z_NN columns)", "Explore", "search",
                     "type the path of a predictions Parquet file with latent (z_NN) columns", make, load_now=False)
