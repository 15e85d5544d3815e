"""Balanced training rows for the tile recipes (``classify``, ``segment``): the spec key ``sampler``
(``positive_fraction`` of each epoch's training tiles with ``column`` > ``threshold``; column
default ``tumor_ratio``, from :func:`wsi_lab.annotations.tile_class_fractions`) redraws the
training rows every epoch, reproducibly from the seed, the same on every rank. With
``hard_negatives`` (segment: :mod:`wsi_lab.train.mining`) a share of each epoch's negative slots goes
to the tiles the model got most wrong after the epoch before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from wsi_lab.annotations.sampler import balanced_indices
from wsi_lab.errors import DataError

__all__ = ["BalancedView", "balanced_train_set", "fill_hard_negatives"]


def fill_hard_negatives(order: np.ndarray, negative: np.ndarray, hard: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """``order`` (table rows of one epoch's draw) with ``len(hard)`` of its negative slots (``negative``:
    a boolean per slot) replaced by the rows ``hard``; the slots are drawn from ``(seed, epoch)``, so the
    positives and their places stay as they were."""
    slots = np.flatnonzero(negative)
    k = min(len(hard), len(slots))
    if k == 0:
        return order
    rng = np.random.default_rng([int(seed), int(epoch), 0x4A4E])
    out = order.copy()
    out[np.sort(rng.choice(slots, size=k, replace=False))] = hard[:k]
    return out


class BalancedView(torch.utils.data.Dataset):
    """The training rows ``rows`` of ``base``, redrawn each epoch (:meth:`set_epoch`) so that
    ``positive_fraction`` of them have ``ratios > threshold`` (:func:`balanced_indices`); with a
    ``miner`` (:class:`~wsi_lab.train.mining.HardNegativeMiner`, set by the recipe once the model
    exists) part of the negative slots take the hardest negatives."""

    def __init__(self, base: torch.utils.data.Dataset, rows: np.ndarray, ratios: np.ndarray, positive_fraction: float,
                 threshold: float, seed: int) -> None:
        self.base, self.rows, self.ratios = base, np.asarray(rows), np.asarray(ratios, np.float64)
        self.positive_fraction, self.threshold, self.seed = positive_fraction, threshold, seed
        self.miner: Any = None  # a HardNegativeMiner
        self.set_epoch(0)

    @property
    def negative_rows(self) -> np.ndarray:
        """The table rows of the negative training tiles (``ratio <= threshold``)."""
        return self.rows[~(self.ratios > self.threshold)]

    def set_epoch(self, epoch: int) -> None:
        pick = balanced_indices(self.ratios, self.positive_fraction, self.threshold, seed=self.seed, epoch=epoch)
        order = self.rows[pick]
        if self.miner is not None and self.miner.active(epoch):
            negative = ~(self.ratios[pick] > self.threshold)
            hard = self.miner.hardest(epoch, int(negative.sum()))
            order = fill_hard_negatives(order, negative, hard, self.seed, epoch)
        self.order = order

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
