"""Balanced tile sampling from a per-tile tumour share (the ``tumor_ratio`` column of
:func:`~wsi_lab.annotations.raster.tile_class_fractions`): a tile is positive when its share is
above ``threshold``, and every batch of ``batch_size`` holds ``round(positive_fraction *
batch_size)`` positives (drawn with replacement when there are too few), reproducibly per
``(seed, epoch)``. Plain numpy: a DataLoader takes the sampler as is (``sampler=``), and the
training recipes use :func:`balanced_indices` to redraw their training rows each epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from wsi_lab.errors import DataError, InvalidParameterError

__all__ = ["balanced_indices", "BalancedTileSampler"]


def _check(positive_fraction: float, threshold: float) -> None:
    if not 0.0 <= float(positive_fraction) <= 1.0:
        raise InvalidParameterError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
    if not 0.0 <= float(threshold) < 1.0:
        raise InvalidParameterError(f"threshold must be in [0, 1), got {threshold!r}")


def balanced_indices(ratios: Sequence[float] | np.ndarray, positive_fraction: float = 0.5, threshold: float = 0.0,
                     n: int | None = None, batch_size: int | None = None, seed: int = 0, epoch: int = 0,
                     hard_negatives: np.ndarray | None = None) -> np.ndarray:
    """``n`` (default ``len(ratios)``) row indices with positives (``ratio > threshold``) making up
    ``positive_fraction`` of each consecutive block of ``batch_size`` (default: of the whole draw).
    ``hard_negatives``: optional per-row weights (e.g. the last epoch's loss) to draw negatives by.
    Raises :class:`DataError` when a class that is asked for has no rows."""
    _check(positive_fraction, threshold)
    r = np.asarray(ratios, np.float64)
    n = len(r) if n is None else int(n)
    pos, neg = np.flatnonzero(r > threshold), np.flatnonzero(~(r > threshold))
    rng = np.random.default_rng([int(seed), int(epoch), 0x5A11])
    bs = n if not batch_size else int(batch_size)
    counts = []
    left = n
    while left > 0:
        b = min(bs, left)
        counts.append((int(round(positive_fraction * b)), b))
        left -= b
    need_pos = sum(k for k, _ in counts)
    need_neg = n - need_pos
    if need_pos and not len(pos):
        raise DataError(f"no positive tile (ratio > {threshold}) to sample {positive_fraction:.0%} positives from; "
                        "check the annotations or lower positive_fraction")
    if need_neg and not len(neg):
        raise DataError(f"no negative tile (ratio <= {threshold}) to sample from; raise threshold or "
                        "positive_fraction")

    def draw(pool: np.ndarray, k: int, weights: np.ndarray | None = None) -> np.ndarray:
        if k == 0:
            return np.zeros(0, np.int64)
        p = None
        if weights is not None:
            w = np.clip(np.asarray(weights, np.float64)[pool], 0, None)
            p = w / w.sum() if w.sum() > 0 else None
        if p is not None or k > len(pool):
            return rng.choice(pool, size=k, replace=True, p=p)
        return rng.permutation(pool)[:k]

    ps, ns = draw(pos, need_pos), draw(neg, need_neg, hard_negatives)
    out, i, j = [], 0, 0
    for k, b in counts:
        block = np.concatenate([ps[i:i + k], ns[j:j + b - k]])
        out.append(rng.permutation(block))
        i, j = i + k, j + b - k
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


class BalancedTileSampler:
    """A DataLoader sampler over rows with per-tile ``ratios``: each epoch yields ``num_samples``
    indices in batches of ``batch_size`` with a fixed share of positives (:func:`balanced_indices`);
    call :meth:`set_epoch` between epochs (as with DistributedSampler) for a new draw."""

    def __init__(self, ratios: Sequence[float] | np.ndarray, positive_fraction: float = 0.5, threshold: float = 0.0,
                 batch_size: int | None = None, num_samples: int | None = None, seed: int = 0) -> None:
        _check(positive_fraction, threshold)
        self.ratios = np.asarray(ratios, np.float64)
        self.positive_fraction, self.threshold = float(positive_fraction), float(threshold)
        self.batch_size, self.seed, self.epoch = batch_size, int(seed), 0
        self.num_samples = len(self.ratios) if num_samples is None else int(num_samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This epoch's indices."""
        return balanced_indices(self.ratios, self.positive_fraction, self.threshold, self.num_samples, self.batch_size,
                                self.seed, self.epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples
