"""Balanced training rows for the tile recipes (``classify``, ``segment``): the spec key ``sampler``
(``positive_fraction`` of each epoch's training tiles with ``column`` > ``threshold``; column
default ``tumor_ratio``, from :func:`wsi_lab.annotations.tile_class_fractions`) redraws the
training rows every epoch, reproducibly from the seed, the same on every rank."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from wsi_lab.annotations.sampler import balanced_indices
from wsi_lab.errors import DataError

__all__ = ["BalancedView", "balanced_train_set"]


class BalancedView(torch.utils.data.Dataset):
    """The training rows ``rows`` of ``base``, redrawn each epoch (:meth:`set_epoch`) so that
    ``positive_fraction`` of them have ``ratios > threshold`` (:func:`balanced_indices`)."""

    def __init__(self, base: torch.utils.data.Dataset, rows: np.ndarray, ratios: np.ndarray, positive_fraction: float,
                 threshold: float, seed: int) -> None:
        self.base, self.rows, self.ratios = base, np.asarray(rows), np.asarray(ratios, np.float64)
        self.positive_fraction, self.threshold, self.seed = positive_fraction, threshold, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        pick = balanced_indices(self.ratios, self.positive_fraction, self.threshold, seed=self.seed, epoch=epoch)
        self.order = self.rows[pick]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.base[int(self.order[int(i)])]


def balanced_train_set(spec, base: torch.utils.data.Dataset, rows: np.ndarray,
                       table: pd.DataFrame) -> tuple[BalancedView, Callable[[int], None]]:
    """``(dataset, on_epoch)`` for the loop: the spec's ``sampler`` over ``rows`` of ``base``
    (whose item ``i`` is ``table`` row ``i``). :class:`DataError` when the ratio column is missing."""
    opts = dict(spec.sampler or {})
    column = str(opts.get("column", "tumor_ratio"))
    if column not in table.columns:
        raise DataError(f"{spec.table}: no {column!r} column for the sampler; add it with "
                        "wsi_lab.annotations.tile_class_fractions (or name another column)")
    ratios = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)[rows]
    if not np.isfinite(ratios).all():
        raise DataError(f"{spec.table}: column {column!r} has missing or non-numeric values in the training split")
    view = BalancedView(base, rows, ratios, float(opts.get("positive_fraction", 0.5)), float(opts.get("threshold", 0.0)),
                        spec.seed)
    return view, view.set_epoch
