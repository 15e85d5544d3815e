"""Hard-negative mining for the ``segment`` recipe's balanced sampler: spec key
``sampler: {"positive_fraction": 0.5, "hard_negatives": {"fraction": 0.25, "start_epoch": 1, "pool": N}}``.

After epoch ``start_epoch`` (and after each later one) the current model scores ``pool`` negative
training tiles (all of them when ``pool`` is not given; otherwise a subset drawn from the seed and the
epoch): each tile's mean pixel cross entropy against its all-background mask, and its false-positive
pixel rate. The next epoch's draw fills ``fraction`` of its negative slots with the highest-loss
tiles, hardest first (ties: the lower row), the other slots as before (:class:`BalancedView`), so the
share of positives per epoch does not change. Under DDP / Horovod each rank scores its share of the pool
and every rank receives all the scores, so every rank draws the same rows; the same seed gives the same
rows. Each mining step is one ``metrics.jsonl`` record (``split: "hard_negatives"``: ``loss`` = mean loss
of the tiles drawn, ``tiles``, ``pool``, ``pool_loss``, ``fp_rate``) and one file
``hard_negatives/epoch-NNNN.json`` with the table rows drawn and their losses (rank 0 writes both).

:func:`check_hard_negatives` needs no torch (the spec's validation calls it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsi_lab.errors import InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["HARD_NEGATIVE_KEYS", "check_hard_negatives", "HardNegativeMiner"]

HARD_NEGATIVE_KEYS = ("fraction", "start_epoch", "pool")


def check_hard_negatives(value: Any, task: str) -> dict[str, Any]:
    """The ``sampler.hard_negatives`` options with their defaults (``fraction`` 0.25, ``start_epoch`` 1,
    ``pool`` every negative); :class:`InvalidParameterError` naming the key for unknown or impossible values."""
    def bad(why: str) -> InvalidParameterError:
        return InvalidParameterError(f"job spec key 'sampler': hard_negatives {why}")

    if task != "segment":
        raise bad(f"mines the negative tiles of task segment, not {task!r}")
    if not isinstance(value, Mapping):
        raise bad(f"must be a mapping with keys {list(HARD_NEGATIVE_KEYS)}, got {value!r}")
    unknown = sorted(set(value) - set(HARD_NEGATIVE_KEYS))
    if unknown:
        raise bad(f"has unknown option(s) {unknown}; known: {list(HARD_NEGATIVE_KEYS)}")
    fraction, start, pool = value.get("fraction", 0.25), value.get("start_epoch", 1), value.get("pool")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise bad(f"fraction (the share of negative slots given to hard negatives) must be in (0, 1], got {fraction!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 1:
        raise bad(f"start_epoch (mining starts after this epoch) must be an integer >= 1, got {start!r}")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
        raise bad(f"pool (negative tiles scored per epoch) must be an integer >= 1, got {pool!r}")
    return {"fraction": float(fraction), "start_epoch": int(start), "pool": None if pool is None else int(pool)}


class HardNegativeMiner:
    """Scores negative training tiles with the model being trained and hands :class:`BalancedView` the
    hardest (module docstring). ``base[row]`` is ``(image, mask)`` of table row ``row``; ``negatives``
    are the table rows of the negative training tiles; ``ctx`` the loop's process context."""

    def __init__(self, base, negatives: np.ndarray, model, ctx, spec, options: Mapping[str, Any]) -> None:
        self.base, self.model, self.ctx, self.spec = base, model, ctx, spec
        self.negatives = np.sort(np.asarray(negatives, np.int64))
        self.fraction, self.start_epoch = float(options["fraction"]), int(options["start_epoch"])
        self.pool = options.get("pool")

    def active(self, epoch: int) -> bool:
        """Whether the draw of ``epoch`` takes hard negatives (scored after epoch ``epoch - 1``)."""
        return epoch > self.start_epoch and len(self.negatives) > 0

    def pool_rows(self, epoch: int) -> np.ndarray:
        """The table rows scored before ``epoch`` (sorted): every negative, or ``pool`` of them drawn
        from ``(seed, epoch)``."""
        if self.pool is None or self.pool >= len(self.negatives):
            return self.negatives
        rng = np.random.default_rng([int(self.spec.seed), int(epoch), 0x4A4D])
        return np.sort(rng.choice(self.negatives, size=int(self.pool), replace=False))

    def score(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(loss, fp_rate)`` per row of ``rows``: mean pixel cross entropy and the share of pixels the
        model calls non-background. Each rank scores ``rows[rank::world]``; every rank gets all scores."""
        import torch
        from torch.nn import functional as F

        mine = rows[self.ctx.rank::self.ctx.world_size]
        batch = max(1, self.spec.batch_size // self.ctx.world_size)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(self.base, mine.tolist()), batch_size=batch,
                                             shuffle=False, num_workers=self.spec.num_workers)
        if self.ctx.is_main:  # a pass over every pooled negative between epochs: say so in the job's log
            print(f"hard negatives: scoring {len(rows)} negative tile(s) over {self.ctx.world_size} process(es)",
                  flush=True)
        losses, fps = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for x, y in loader:
                    x, y = x.to(self.ctx.device), y.to(self.ctx.device)
                    logits = self.model(x).float()
                    losses.append(F.cross_entropy(logits, y, reduction="none").mean((1, 2)).cpu().numpy())
                    fps.append((logits.argmax(1) != 0).float().mean((1, 2)).cpu().numpy())
        finally:
            self.model.train(was_training)
        loss = np.concatenate(losses) if losses else np.zeros(0)
        fp = np.concatenate(fps) if fps else np.zeros(0)
        parts = self.ctx.gather((loss, fp))
        full_loss, full_fp = np.zeros(len(rows)), np.zeros(len(rows))
        for r, (lo, f) in enumerate(parts):
            full_loss[r::self.ctx.world_size], full_fp[r::self.ctx.world_size] = lo, f
        return full_loss, full_fp

    def hardest(self, epoch: int, n_slots: int) -> np.ndarray:
        """The table rows for ``round(fraction * n_slots)`` hard-negative slots of ``epoch`` (hardest
        first, at most the pool), recorded by rank 0 (module docstring)."""
        rows = self.pool_rows(epoch)
        loss, fp = self.score(rows)
        k = min(int(round(self.fraction * n_slots)), len(rows))
        order = np.lexsort((rows, -loss))[:k]  # by loss, descending; ties: the lower row first
        picked = rows[order]
        if self.ctx.is_main:
            self._record(epoch, rows, loss, fp, order, picked)
        return picked

    def _record(self, epoch: int, rows, loss, fp, order, picked) -> None:
        from wsi_lab.io import atomic_write_bytes
        from wsi_lab.train.loop import emit_metric

        out = Path(self.spec.out)
        rec = {"epoch": int(epoch), "split": "hard_negatives",
               "loss": float(loss[order].mean()) if len(order) else None, "tiles": int(len(picked)),
               "pool": int(len(rows)), "pool_loss": float(loss.mean()) if len(loss) else None,
               "fp_rate": float(fp[order].mean()) if len(order) else None}
        atomic_write_bytes(out / "hard_negatives" / f"epoch-{int(epoch):04d}.json", json.dumps(
            {"epoch": int(epoch), "rows": picked.tolist(), "loss": loss[order].tolist(),
             "fp_rate": fp[order].tolist(), "pool": int(len(rows))}).encode())
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        emit_metric(rec)
        log.info("epoch %d: %d hard negatives (mean loss %.4g; pool of %d, mean %.4g)", epoch, len(picked),
                 rec["loss"] or 0.0, len(rows), rec["pool_loss"] or 0.0)
