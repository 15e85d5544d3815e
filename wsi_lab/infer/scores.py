"""Slide- and patient-level scores from tile predictions: the mean of tile probabilities (the classic
workflow), a majority vote, attention-weighted means (MIL attention) or the maximum."""

from __future__ import annotations

import numpy as np
import pandas as pd

from wsi_lab.errors import DataError, InvalidParameterError

__all__ = ["aggregate", "prob_columns", "class_names", "HOW", "BY"]

HOW = ("mean", "vote", "attention", "max")
BY = {"slide": "slide_id", "patient": "patient_id"}


def prob_columns(table: pd.DataFrame) -> list[str]:
    """The ``prob_<class>`` columns, in the model's class order when recorded."""
    recorded = (table.attrs.get("wsi_lab") or {}).get("predict", {}).get("classes") or []
    cols = [f"prob_{c}" for c in recorded if f"prob_{c}" in table.columns]
    return cols or [c for c in table.columns if str(c).startswith("prob_")]


def class_names(table: pd.DataFrame) -> list[str]:
    """Class names of a predictions table (from its ``prob_<class>`` columns)."""
    return [c[len("prob_"):] for c in prob_columns(table)]


def _single_value(s: pd.Series) -> object:
    return s.iloc[0] if s.nunique(dropna=True) == 1 else None


def aggregate(table: pd.DataFrame, how: str = "mean", by: str = "slide", label_column: str = "label") -> pd.DataFrame:
    """One row per slide (``by="slide"``) or patient (``by="patient"``): ``prob_<class>`` (scores that
    sum to 1), ``pred``, ``n_tiles``, and ``label`` when every tile of the group has the same one.

    ``how``: ``mean`` of tile probabilities; ``vote``: share of tiles whose ``pred`` is each class;
    ``attention``: mean weighted by the ``attention`` column; ``max``: the highest tile probability per
    class, renormalised. A patient with several slides gets one answer over all its tiles."""
    if how not in HOW:
        raise InvalidParameterError(f"how must be one of {HOW}, got {how!r}")
    if by not in BY:
        raise InvalidParameterError(f"by must be one of {tuple(BY)}, got {by!r}")
    key = BY[by]
    probs = prob_columns(table)
    if not probs:
        raise DataError(f"aggregate needs prob_<class> columns (a classifier's predictions); the table has "
                        f"{list(table.columns)}")
    if key not in table.columns:
        raise DataError(f"aggregate by {by} needs a {key!r} column")
    if len(table) == 0:
        raise DataError("aggregate: the predictions table is empty")
    classes = [c[len("prob_"):] for c in probs]
    p = table[probs].to_numpy(np.float64)
    if how == "vote":
        if "pred" not in table.columns:
            raise DataError("aggregate(how='vote') needs the 'pred' column")
        pred = table["pred"].astype(str).to_numpy()
        p = np.stack([(pred == c).astype(np.float64) for c in classes], 1)
    weights = np.ones(len(table))
    if how == "attention":
        if "attention" not in table.columns:
            raise DataError("aggregate(how='attention') needs the 'attention' column (an attention-MIL model's output)")
        weights = table["attention"].to_numpy(np.float64)
    groups = pd.Series(table[key].astype(str).to_numpy())
    codes, names = pd.factorize(groups)
    k = len(names)
    if how == "max":
        scores = np.full((k, len(classes)), -np.inf)
        np.maximum.at(scores, codes, p)
    else:
        scores = np.zeros((k, len(classes)))
        np.add.at(scores, codes, p * weights[:, None])
        total = np.bincount(codes, weights=weights, minlength=k)
        scores /= np.where(total > 0, total, 1.0)[:, None]
    sums = scores.sum(1, keepdims=True)
    scores = scores / np.where(sums > 0, sums, 1.0)
    out = pd.DataFrame({key: names.astype(str)})
    for i, c in enumerate(probs):
        out[c] = scores[:, i].astype(np.float32)
    out["pred"] = np.asarray(classes, dtype=object)[scores.argmax(1)]
    out["n_tiles"] = np.bincount(codes, minlength=k)
    if by == "slide" and "patient_id" in table.columns:
        out.insert(1, "patient_id", table.groupby(groups.to_numpy())["patient_id"].first().reindex(names).to_numpy())
    if label_column in table.columns:
        from wsi_lab.data.tile_reader import label_key

        lab = table[label_column].map(lambda v: None if pd.isna(v) else label_key(v))
        per = lab.groupby(groups.to_numpy()).agg(_single_value)
        out["label"] = per.reindex(names).to_numpy()
    out.attrs = {"wsi_lab": {**(table.attrs.get("wsi_lab") or {}), "aggregate": {"how": how, "by": by}}}
    return out
