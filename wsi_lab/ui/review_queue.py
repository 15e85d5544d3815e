"""The review queue's data (no widgets): the predictions table loaded, the classes a reviewer picks from,
the queue's entries (slides with their tile and reviewed counts) and the layer kinds a table can draw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["LAYER_KINDS", "classes_of", "kind_ok", "load_predictions", "queue_options"]

LAYER_KINDS = ("pred", "heatmap", "attention", "latent", "clusters", "decisions", "none")


def load_predictions(predictions: Any) -> pd.DataFrame:
    """``predictions`` as a table: a DataFrame as is, else a predictions file read."""
    if isinstance(predictions, pd.DataFrame):
        return predictions
    from wsi_lab.infer import read_predictions

    return read_predictions(Path(predictions).expanduser())


def classes_of(table: pd.DataFrame) -> list[str]:
    """The classes a reviewer chooses from: the model's, then any other label already in the table."""
    from wsi_lab.infer.scores import class_names

    try:
        classes = list(class_names(table))
    except Exception:  # noqa: BLE001 - a latents-only table has no model classes; labels may still exist
        classes = []
    if "label" in table.columns:
        classes += sorted(set(table["label"].dropna().astype(str)) - set(classes))
    return classes


def queue_options(table: pd.DataFrame, store: Any) -> list[tuple[str, str]]:
    """The queue's entries: ``(label, slide_id)`` per slide of ``table``, with its tile and reviewed counts."""
    if "slide_id" not in table.columns or not len(table):
        return []
    out = []
    decided = store.effective()["slide_id"].value_counts()
    for sid, g in table.groupby("slide_id", sort=True):
        out.append((f"{sid} · {len(g)} tiles · {int(decided.get(str(sid), 0))} reviewed", str(sid)))
    return out


def kind_ok(table: pd.DataFrame, kind: str) -> bool:
    """Whether ``table`` has the columns a layer ``kind`` (one of :data:`LAYER_KINDS`) draws from."""
    cols = [str(c) for c in table.columns]
    return {"pred": "pred" in cols, "heatmap": any(c.startswith("prob_") for c in cols),
            "attention": "attention" in cols, "latent": any(c.startswith("z_") for c in cols),
            "clusters": any(c.startswith("z_") for c in cols), "decisions": True, "none": True}[kind]
